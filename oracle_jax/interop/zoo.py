"""Teacher zoo: known pretrained teachers, downloaded, verified and converted on first use.

    python -m oracle_jax.zoo list
    python -m oracle_jax.zoo fetch official/cifar100/resnet56 [--dir D]

`fetch` downloads the teacher's `.pth` (or `.safetensors`), checks its SHA-256, converts it with
`torch_import.load` into an orbax teacher checkpoint `D/<name>` (D defaults to
$ORACLE_JAX_ZOO, else ~/.cache/oracle_jax/zoo) and prints the flags that use it. A config
can name the teacher instead of a path, `teacher.checkpoint = 'zoo:<name>'`: the training
and analysis code resolve it with `resolve`, fetching it once into D.

A download is untrusted until verified: it streams into a temporary file beside its target,
hashed and size-capped as it arrives, and is renamed into place only when the hash
matches; the conversion writes into a temporary directory renamed when complete. An
interruption, a wrong hash or a missing file leaves nothing half-written behind.
"""
import argparse
import contextlib
import dataclasses
import hashlib
import os
import sys
import urllib.error
import urllib.request
import uuid

from oracle_jax import data, errors, fileio
from oracle_jax.interop import safetensors_reader, torch_import

PREFIX = 'zoo:'
_CHUNK = 1 << 20


class ZooError(errors.UserError):
  """A zoo teacher that cannot be fetched: unknown name, no network, wrong or missing file."""


@dataclasses.dataclass(frozen=True)
class Teacher:
  url: str
  arch: str
  classes: int
  dataset: str
  reference_top1: float  # %, as the source reports it
  sha256: str            # the full hex digest, or the prefix where only that is published
  max_bytes: int         # the exact size where known; a download never grows past it


def _official(dataset, arch, file, reference_top1, sha256, size):
  """A teacher of the official oracle-KD release, pinned to commit 4c1143a
  (`tests/data/reference/official_teachers.json`; top-1 = best of the logged 200 epochs)."""
  url = ('https://github.com/myunghakLee/Distillation-for-High-Quality-Knowledge-Extraction/'
         f'raw/4c1143afe4cabeb595b6e960ff69cd132c91917f/teacher_models/{dataset.upper()}/'
         f'{arch}/{file}')
  return Teacher(url, arch, data.dataset_spec(dataset).num_classes, dataset, reference_top1,
                 sha256, size)


# torchvision publishes only the first 8 hex digits of each file's SHA-256 (in its name, as
# `torch.hub` checks them) and no sizes: these are verified by that prefix, and capped at a
# size above the largest (resnet101, about 171 MB).
_TORCHVISION_MAX_BYTES = 256 << 20


def _torchvision(arch, prefix, reference_top1):
  """torchvision's IMAGENET1K_V1 weights; top-1 from torchvision's model documentation."""
  return Teacher(f'https://download.pytorch.org/models/{arch}-{prefix}.pth', arch, 1000,
                 'imagenet2012', reference_top1, prefix, _TORCHVISION_MAX_BYTES)


# The official resnet110 teachers are left out: their files were not available to verify a
# hash (official_teachers.json lists none).
REGISTRY = {
    'official/cifar10/resnet20': _official(
        'cifar10', 'resnet20', 'best.pth', 90.34,
        '7721ef0132a50456b14c5b1d70a329e22b4d7537038fd363431de9e31a8ef3e7', 1143547),
    'official/cifar10/resnet32': _official(
        'cifar10', 'resnet32', 'best.pth', 90.88,
        '941ceb42d0a24db1c375262c182b1fb11add5175a2dac7912681a278ddaec1cb', 1950419),
    'official/cifar10/resnet56': _official(
        'cifar10', 'resnet56', 'best.pth', 91.62,
        '72c50eda9f6c0080b6fd4a65da5d75715146266691a5ddf10e7f5c7c8f0f0403', 3564227),
    'official/cifar100/resnet20': _official(
        'cifar100', 'resnet20', 'model.pth', 68.65,
        '1fccacf6b658acf80652c7c9841735c3ee7bb2a591bafc30d5c05f7860b96969', 1152381),
    'official/cifar100/resnet32': _official(
        'cifar100', 'resnet32', 'model.pth', 70.88,
        '44bb39dbfff95ba8b1c87f9936c17c5d7db1fe862fcfc727747ff1ccc2983d17', 1952285),
    'official/cifar100/resnet56': _official(
        'cifar100', 'resnet56', 'model.pth', 72.45,
        '2f0bccdb3acc680326dd1a9536eccd3c3a79d71f5965cdf7997ca192ada853ca', 3552093),
    'torchvision/imagenet/resnet18': _torchvision('resnet18', 'f37072fd', 69.758),
    'torchvision/imagenet/resnet34': _torchvision('resnet34', 'b627a593', 73.314),
    'torchvision/imagenet/resnet50': _torchvision('resnet50', '0676ba61', 76.130),
    'torchvision/imagenet/resnet101': _torchvision('resnet101', '63fe2227', 77.374),
}


def default_directory():
  return fileio.path(os.environ.get('ORACLE_JAX_ZOO') or '~/.cache/oracle_jax/zoo')


def entry(name) -> Teacher:
  if name not in REGISTRY:
    raise ZooError(f'Unknown zoo teacher {name!r}; known: {", ".join(sorted(REGISTRY))}.')
  return REGISTRY[name]


def _hash_matches(digest, expected):
  return digest == expected if len(expected) == 64 else digest.startswith(expected)


def download(url, target, sha256, max_bytes):
  """Streams `url` into `target`, renamed into place only once its SHA-256 matches."""
  target = fileio.path(target)
  target.parent.mkdir(parents=True, exist_ok=True)
  partial = target.parent / f'.{target.name}.download-{uuid.uuid4().hex[:12]}'
  digest, size = hashlib.sha256(), 0
  try:
    with contextlib.closing(urllib.request.urlopen(url, timeout=60)) as response, \
        partial.open('wb') as out:
      while chunk := response.read(_CHUNK):
        size += len(chunk)
        if size > max_bytes:
          raise ZooError(f'{url} is larger than the {max_bytes:,} bytes expected; refusing it.')
        digest.update(chunk)
        out.write(chunk)
    if not _hash_matches(digest.hexdigest(), sha256):
      raise ZooError(f'{url} has SHA-256 {digest.hexdigest()}, expected {sha256}'
                     f'{"…" if len(sha256) < 64 else ""}: not the known file; nothing was kept.')
    partial.replace(target)
  except OSError as e:  # urllib's URLError and HTTPError included
    raise ZooError(f'Could not download {url} ({getattr(e, "reason", None) or e}); nothing '
                   'was kept. Without network here, run `python -m oracle_jax.zoo fetch NAME '
                   '--dir D` where there is, and copy D here (as $ORACLE_JAX_ZOO).') from None
  finally:
    if partial.exists():
      partial.unlink()
  return target


def _verify(path, sha256):
  digest = hashlib.sha256()
  with path.open('rb') as f:
    while chunk := f.read(_CHUNK):
      digest.update(chunk)
  if not _hash_matches(digest.hexdigest(), sha256):
    raise ZooError(f'{path} is not the known file (SHA-256 {digest.hexdigest()}, expected '
                   f'{sha256}); delete it and fetch again.')
  return digest.hexdigest()


def _convert(name, teacher, source, teacher_dir, sha256):
  """`source` (.pth, .safetensors) → an orbax teacher checkpoint at `teacher_dir`, written
  aside first."""
  staging = teacher_dir.parent / f'.{teacher_dir.name}.converting-{uuid.uuid4().hex[:12]}'
  try:
    torch_import.convert_file(str(source), staging, teacher.arch, teacher.classes,
                              dataset=teacher.dataset, zoo=name, url=teacher.url,
                              sha256=sha256, reference_top1=teacher.reference_top1)
    try:
      staging.rename(teacher_dir)
    except OSError:
      if not teacher_dir.exists():  # else another process finished first: use its copy
        raise
  finally:
    if staging.exists():
      staging.rmtree()


def source_suffix(url):
  """How a teacher's downloaded file is named: `.safetensors` for such a URL, else `.pth`."""
  return safetensors_reader.SUFFIX if safetensors_reader.is_safetensors(url) else '.pth'


def fetch(name, directory=None):
  """The orbax teacher checkpoint of zoo teacher `name` in `directory`, fetched and
  converted unless already there; the verified `.pth` (or `.safetensors`) is kept beside it."""
  teacher = entry(name)
  directory = fileio.path(directory) if directory else default_directory()
  teacher_dir, source = directory / name, directory / f'{name}{source_suffix(teacher.url)}'
  if teacher_dir.exists():
    return teacher_dir
  if not source.exists():
    download(teacher.url, source, teacher.sha256, teacher.max_bytes)
  _convert(name, teacher, source, teacher_dir, _verify(source, teacher.sha256))
  return teacher_dir


def resolve(checkpoint):
  """`teacher.checkpoint` as a path: `zoo:<name>` fetched (once) into the zoo directory,
  anything else unchanged."""
  checkpoint = str(checkpoint)
  if not checkpoint.startswith(PREFIX):
    return checkpoint
  return str(fetch(checkpoint[len(PREFIX):]))


def flags_line(name, teacher_dir):
  return (f'--config.teacher.model={entry(name).arch} '
          f'--config.teacher.checkpoint={teacher_dir}')


def main(argv=None):
  parser = argparse.ArgumentParser(prog='python -m oracle_jax.zoo', description=__doc__.split('\n')[0])
  commands = parser.add_subparsers(dest='command', required=True)
  commands.add_parser('list', help='the known teachers')
  fetch_parser = commands.add_parser('fetch', help='download, verify and convert a teacher')
  fetch_parser.add_argument('name')
  fetch_parser.add_argument('--dir', default=None, help='zoo directory (default '
                            '$ORACLE_JAX_ZOO or ~/.cache/oracle_jax/zoo)')
  args = parser.parse_args(argv)
  if args.command == 'list':
    for name, t in sorted(REGISTRY.items()):
      print(f'{name:32} {t.arch:10} {t.dataset:13} top-1 {t.reference_top1:<7g} {t.url}')
    return 0
  try:
    teacher_dir = fetch(args.name, args.dir)
  except errors.UserError as e:  # anything else is a bug: keep its traceback
    print(f'error: {e}', file=sys.stderr)
    return 1
  print(flags_line(args.name, teacher_dir))
  return 0


if __name__ == '__main__':
  sys.exit(main())
