"""The documented name of `oracle_jax.interop.zoo` (`python -m oracle_jax.zoo`).

A package rather than a module file so that git follows the move of the old `zoo.py`
into `interop/` when merging edits made to it elsewhere.
"""
from oracle_jax.interop.zoo import *  # pylint: disable=wildcard-import,unused-wildcard-import
from oracle_jax.interop.zoo import main
