"""The one path layer: every file the project reads or writes goes through here.

Paths are `etils.epath.Path`s, so the same code reads and writes local disks, gs:// and
s3:// buckets and any other filesystem epath knows. Writes are atomic: the content goes
to a temporary name beside the target and is renamed into place, so a kill mid-write
leaves the old file or the new one, never a truncated one. On object stores (gs://, s3://)
an upload is already all-or-nothing, so objects are written in one request instead.
"""
import json
import os
import uuid

from etils import epath

from oracle_jax import errors


def path(p) -> epath.Path:
  """An `epath.Path`: `~` expanded and local paths made absolute; URLs kept as they are."""
  p = str(p)
  if _is_url(p):
    return epath.Path(p)
  return epath.Path(os.path.abspath(os.path.expanduser(p)))


def _is_url(p) -> bool:
  return '://' in str(p)


def _temporary(target: epath.Path) -> epath.Path:
  return target.parent / f'.{target.name}.tmp-{uuid.uuid4().hex[:12]}'


def write_bytes(target, data: bytes) -> epath.Path:
  """Writes `data` to `target` atomically (temporary name, then rename)."""
  target = path(target)
  if _is_url(target):
    target.write_bytes(data)  # one upload: the object appears whole or not at all
    return target
  target.parent.mkdir(parents=True, exist_ok=True)
  tmp = _temporary(target)
  try:
    tmp.write_bytes(data)
    tmp.replace(target)
  finally:
    if tmp.exists():
      tmp.unlink()
  return target


def write_text(target, text: str) -> epath.Path:
  """Writes `text` (UTF-8) to `target` atomically."""
  return write_bytes(target, text.encode('utf-8'))


def write_json(target, obj, **dump_kwargs) -> epath.Path:
  return write_text(target, json.dumps(obj, **{'indent': 2, **dump_kwargs}) + '\n')


class UnreadableFileError(errors.UserError):
  """A file the project wrote earlier (or the user gave) cannot be parsed."""


def read_json(source, what: str = 'file'):
  """Parses a JSON file; a malformed one is a UserError naming the file and the fix."""
  source = path(source)
  try:
    return json.loads(source.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise UnreadableFileError(
        f'The {what} {str(source)!r} is not valid JSON ({e}); it was probably cut short '
        'by a crash. Move it away (or restore it) and rerun.') from None
