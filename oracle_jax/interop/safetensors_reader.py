"""Reads `.safetensors` files (timm's, Hugging Face's, our exports) with a strict header.

The format: an 8-byte little-endian header length N, N bytes of JSON
`{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}`,
then the data region, which the tensors' byte ranges must cover exactly (no gaps, no
overlaps). A file cannot carry code, but its header is untrusted: the whole header is
checked before any tensor is made (dtypes from an allowlist, shapes of non-negative ints,
ranges inside the data region whose sizes match the shapes), the work stays linear in the
file's size, and a bad file is one line naming it and the problem. Tensors are numpy
views of the data region, read once.
"""
import json
import struct

import ml_dtypes
import numpy as np

from oracle_jax import errors, fileio
from oracle_jax.interop import pth_reader

SUFFIX = '.safetensors'
# The safetensors library's own bound (100 MB); real headers are kilobytes.
MAX_HEADER_BYTES = 100_000_000
MAX_DIMS = 32  # numpy's historical limit; networks use 4

_DTYPES = {'F64': np.dtype('<f8'), 'F32': np.dtype('<f4'), 'F16': np.dtype('<f2'),
           'BF16': np.dtype(ml_dtypes.bfloat16), 'I64': np.dtype('<i8'),
           'I32': np.dtype('<i4'), 'I16': np.dtype('<i2'), 'I8': np.dtype('i1'),
           'U64': np.dtype('<u8'), 'U32': np.dtype('<u4'), 'U16': np.dtype('<u2'),
           'U8': np.dtype('u1'), 'BOOL': np.dtype('?')}
_FIELDS = {'dtype', 'shape', 'data_offsets'}

MalformedCheckpointError = pth_reader.MalformedCheckpointError


class _Bad(Exception):
  """Raised inside the reader; `read` adds the file's name."""


def is_safetensors(path) -> bool:
  return str(path).lower().endswith(SUFFIX)


def _shown(text, limit=60):
  """A string from the file, quoted, as one printable line."""
  return ascii(text if len(text) <= limit else text[:limit] + '...')


def _is_count(value):
  return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _no_duplicates(pairs):
  keys = [k for k, _ in pairs]
  if len(set(keys)) != len(keys):
    raise _Bad('its header names a key twice')
  return dict(pairs)


def _parse_header(raw: bytes):
  try:
    header = json.loads(raw.decode('utf-8'), object_pairs_hook=_no_duplicates)
  except (UnicodeDecodeError, ValueError, RecursionError) as e:
    raise _Bad(f'its header is not JSON ({type(e).__name__})') from None
  metadata = header.pop('__metadata__', {})
  if not (isinstance(metadata, dict) and
          all(isinstance(v, str) for v in metadata.values())):
    raise _Bad('its __metadata__ is not a map of strings to strings')
  return header, metadata


def _check_entry(name, entry, data_size):
  """(dtype, shape, begin, end) of one tensor, every field checked."""
  if not isinstance(entry, dict) or set(entry) != _FIELDS:
    raise _Bad(f'tensor {_shown(name)} needs exactly the fields {sorted(_FIELDS)}')
  dtype, shape, offsets = entry['dtype'], entry['shape'], entry['data_offsets']
  if not isinstance(dtype, str) or dtype not in _DTYPES:
    raise _Bad(f'tensor {_shown(name)} has dtype {_shown(str(dtype))}, not one of '
               f'{", ".join(_DTYPES)}')
  if not (isinstance(shape, list) and len(shape) <= MAX_DIMS and
          all(_is_count(d) for d in shape)):
    raise _Bad(f'tensor {_shown(name)}: its shape is not a list of at most {MAX_DIMS} '
               'non-negative integers')
  if not (isinstance(offsets, list) and len(offsets) == 2 and
          all(_is_count(o) for o in offsets) and offsets[0] <= offsets[1] <= data_size):
    raise _Bad(f'tensor {_shown(name)}: data_offsets must be [begin, end] with '
               f'0 <= begin <= end <= {data_size} (the data region\'s size)')
  count = 1
  for d in shape:
    count *= d
    if count > data_size:  # stops before the product of hostile dims grows large
      break
  if count * _DTYPES[dtype].itemsize != offsets[1] - offsets[0]:
    raise _Bad(f'tensor {_shown(name)}: its shape {_shown(str(tuple(shape)))} of {dtype} '
               f'does not fill its {offsets[1] - offsets[0]} bytes')
  return _DTYPES[dtype], tuple(shape), offsets[0], offsets[1]


def _check_layout(entries, data_size):
  """The byte ranges, in order, must tile the data region: no gap, no overlap."""
  position = 0
  for name, (_, _, begin, end) in sorted(entries.items(), key=lambda e: e[1][2:]):
    if begin != position:
      raise _Bad(f'tensor {_shown(name)} starts at byte {begin} of the data region, '
                 f'expected {position} ({"overlapping" if begin < position else "a gap"})')
    position = end
  if position != data_size:
    raise _Bad(f'its tensors cover {position} of the data region\'s {data_size} bytes')


def parse(blob: bytes):
  """`(tensors, metadata)` of a safetensors file's bytes; raises `_Bad`."""
  if len(blob) < 8:
    raise _Bad('it is shorter than the 8-byte header length')
  (size,) = struct.unpack('<Q', blob[:8])
  if size > min(MAX_HEADER_BYTES, len(blob) - 8):
    raise _Bad(f'its header length {size} exceeds the file ({len(blob)} bytes) or the '
               f'{MAX_HEADER_BYTES}-byte limit')
  if blob[8:9] != b'{':  # so the header, once parsed, is an object
    raise _Bad('its header does not start with "{"')
  header, metadata = _parse_header(blob[8:8 + size])
  data = memoryview(blob)[8 + size:]
  entries = {name: _check_entry(name, entry, len(data)) for name, entry in header.items()}
  _check_layout(entries, len(data))
  tensors = {name: np.frombuffer(data[begin:end], dtype).reshape(shape)
             for name, (dtype, shape, begin, end) in entries.items()}
  return tensors, metadata


def read(path):
  """The tensors (name → numpy array) and `__metadata__` of the file at `path`."""
  source = fileio.path(path)
  if not source.is_file():
    raise errors.CheckpointNotFoundError(f'{path} does not exist (or is not a file).')
  try:
    return parse(source.read_bytes())
  except _Bad as e:
    raise MalformedCheckpointError(f'{path} is not a valid safetensors file: {e}.') from None


def read_state_dict(path):
  """The tensors of a safetensors file (a state_dict: names → arrays)."""
  return read(path)[0]
