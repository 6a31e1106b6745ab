from oracle_jax.interop import torch_import

torch_import.main()
