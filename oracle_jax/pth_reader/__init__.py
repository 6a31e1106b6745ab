"""The old name of `oracle_jax.interop.pth_reader`: the very same module object (so tests
that patch its internals patch the reader itself).

A package rather than a module file so that git follows the move of the old
`pth_reader.py` into `interop/` when merging edits made to it elsewhere.
"""
import sys

from oracle_jax.interop import pth_reader

sys.modules[__name__] = pth_reader
