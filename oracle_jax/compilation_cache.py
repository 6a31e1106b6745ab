"""JAX's persistent compilation cache: compile a program once per machine (or per pod).

`enable(directory)` turns it on for the command lines (`config.compilation_cache_dir`;
the library itself never does). JAX keys each entry on the program, the jax/jaxlib
version, the XLA flags and compile options and the devices, so an entry is only ever
reused where it gives the same executable. Entries are read and written through
`fileio` (atomic local writes, one upload on gs://, where a pod's hosts share one cache;
only process 0 writes). A directory that cannot be used (not writable, full, a file in
its place, or holding a corrupted entry) costs one warning naming it: the run then
compiles without the cache (a corrupted entry is replaced), never fails.
"""
import logging
import os

from oracle_jax import fileio

DEFAULT_DIRECTORY = '~/.cache/oracle_jax/xla'
# Programs that took at least this long to compile are cached; 0 = every program: a run's
# many small programs (initialisation, metrics) also load faster than they compile, and
# each higher threshold measured made a warm run slower (benchmarks/README.md,
# "Compilation cache"; JAX's default is 1 s).
MIN_COMPILE_TIME_SECS = 0.0
_ENTRY_SUFFIX = '-cache'  # JAX's own file naming: a directory JAX's LRU cache reads too


def default_directory() -> str:
  """The environment's JAX_COMPILATION_CACHE_DIR if set ('' = off), else the user's cache."""
  return os.environ.get('JAX_COMPILATION_CACHE_DIR', DEFAULT_DIRECTORY)


def enable(directory=None):
  """Makes later compilations read and write the cache in `directory` (None or 'auto', a
  config's default: `default_directory()`; '' turns the cache off). Returns the directory
  used, or None."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax.experimental.compilation_cache import compilation_cache as jax_cache  # pylint: disable=g-import-not-at-top
  directory = default_directory() if directory in (None, 'auto') else str(directory)
  jax_cache.reset_cache()
  if not directory:
    jax.config.update('jax_enable_compilation_cache', False)
    return None
  path = fileio.path(directory)
  jax.config.update('jax_enable_compilation_cache', True)
  jax.config.update('jax_compilation_cache_dir', str(path))
  if 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS' not in os.environ:
    jax.config.update('jax_persistent_cache_min_compile_time_secs', MIN_COMPILE_TIME_SECS)
  if 'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES' not in os.environ:
    jax.config.update('jax_persistent_cache_min_entry_size_bytes', -1)  # no size limit
  if '://' in str(path) and 'JAX_PERSISTENT_CACHE_ENABLE_XLA_CACHES' not in os.environ:
    # XLA's own (GPU autotuning) caches go beside JAX's, through XLA's C++ file layer,
    # which has no gs:// scheme: keep them off there.
    jax.config.update('jax_persistent_cache_enable_xla_caches', 'none')
  _install(_Cache(path))
  return str(path)


def _install(cache):
  """Makes `cache` the one JAX reads and writes (JAX has no public hook for it: a jax
  without one keeps its own cache of the same directory)."""
  from jax._src import compilation_cache as jax_internal  # pylint: disable=g-import-not-at-top
  if hasattr(jax_internal, '_cache') and hasattr(jax_internal, '_cache_initialized'):
    jax_internal._cache = cache  # pylint: disable=protected-access
    jax_internal._cache_initialized = True  # pylint: disable=protected-access


class _Cache:
  """JAX's entries in a directory (JAX's cache interface: `get`, `put`, `_path`); its
  first failure (a warning naming the directory) turns it off for this process, and a
  corrupted entry is replaced."""

  def __init__(self, directory):
    self._path = directory
    self._working = True
    self._warned = False

  def get(self, key: str):
    if not self._working:
      return None
    entry = self._path / f'{key}{_ENTRY_SUFFIX}'
    try:
      if not entry.exists():
        return None
      value = entry.read_bytes()
    except Exception as e:  # pylint: disable=broad-except  (any filesystem's error)
      self._stop(e)
      return None
    if _is_corrupted(value):
      self._warn(f'holds a corrupted entry, {entry.name}; its program is compiled again '
                 'and the entry replaced')
      return None
    return value

  def put(self, key: str, value: bytes):
    if not self._working:
      return
    entry = self._path / f'{key}{_ENTRY_SUFFIX}'
    try:
      if entry.exists() and not _is_corrupted(entry.read_bytes()):
        return  # another process wrote it first
      fileio.write_bytes(entry, value)
    except Exception as e:  # pylint: disable=broad-except
      self._stop(e)

  def _stop(self, error):
    self._working = False
    self._warn(f'cannot be used ({type(error).__name__}: {error}); this process compiles '
               'without it. Set --config.compilation_cache_dir (or JAX_COMPILATION_CACHE_DIR) '
               "to a writable directory, or to '' to turn the cache off")

  def _warn(self, what):
    if not self._warned:  # one warning per process, however many programs it compiles
      self._warned = True
      logging.warning('The compilation cache %s %s.', self._path, what)


def _is_corrupted(value: bytes) -> bool:
  """Whether JAX's compressed entry fails to decompress (zlib checks a checksum)."""
  from jax._src import compilation_cache as jax_internal  # pylint: disable=g-import-not-at-top
  try:
    jax_internal.decompress_executable(value)
  except Exception:  # pylint: disable=broad-except  (zlib.error, zstd's errors)
    return True
  return False
