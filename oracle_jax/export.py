"""`python -m oracle_jax.export SOURCE OUT [--member=NAME]`: `oracle_jax.interop.export`."""
import sys

from oracle_jax.interop.export import *  # pylint: disable=wildcard-import,unused-wildcard-import
from oracle_jax.interop.export import main

if __name__ == '__main__':
  sys.exit(main())
