"""`oracle_jax.interop.torch_import` under its documented name (`python -m oracle_jax.torch_import`)."""
import sys

from oracle_jax.interop.torch_import import *  # pylint: disable=wildcard-import,unused-wildcard-import
from oracle_jax.interop.torch_import import main

if __name__ == '__main__':
  sys.exit(main())
