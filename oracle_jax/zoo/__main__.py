import sys

from oracle_jax.interop import zoo

sys.exit(zoo.main())
