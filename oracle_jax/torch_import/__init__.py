"""The documented name of `oracle_jax.interop.torch_import` (`python -m oracle_jax.torch_import`).

A package rather than a module file so that git follows the move of the old
`torch_import.py` into `interop/` when merging edits made to it elsewhere.
"""
from oracle_jax.interop.torch_import import *  # pylint: disable=wildcard-import,unused-wildcard-import
from oracle_jax.interop.torch_import import main
