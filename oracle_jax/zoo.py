"""`oracle_jax.interop.zoo` under its documented name (`python -m oracle_jax.zoo`)."""
import sys

from oracle_jax.interop.zoo import *  # pylint: disable=wildcard-import,unused-wildcard-import
from oracle_jax.interop.zoo import main

if __name__ == '__main__':
  sys.exit(main())
