"""Finding, preparing and reading the TFDS data behind a DatasetSpec."""
import contextlib
import functools
import hashlib
import logging
import os
import tempfile
import threading
from unittest import mock

import numpy as np

from oracle_jax import errors, fileio
from oracle_jax.data import specs

# Reading whole splits into memory in chunks of this many examples keeps the
# tf.data batches (and their peak memory) bounded.
_CHUNK = 10_000


class DatasetNotFoundError(errors.UserError, FileNotFoundError):
  """The data of a dataset is not where TFDS looks for it."""


def import_tensorflow():
  """TensorFlow for the input pipeline only: hidden from the GPU, which JAX owns."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], 'GPU')
  return tf


def builder(spec, data_dir):
  """The TFDS builder of `spec`, prepared first if it is one of the project's own.

  `data_dir=None` means TFDS's default (`$TFDS_DATA_DIR`, else ~/tensorflow_datasets).
  """
  if specs.is_folder(spec.name):
    return image_folder(specs.folder_root(spec.name))
  data_dir = str(fileio.path(data_dir)) if data_dir else None  # `~` expanded
  import_tensorflow()
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  if spec.name == 'digits':
    from oracle_jax.data.digits import digits  # pylint: disable=g-import-not-at-top
    return _prepare(digits.Digits(data_dir=data_dir))
  if spec.name == 'tiny_imagenet':
    from oracle_jax.data.tiny_imagenet import tiny_imagenet  # pylint: disable=g-import-not-at-top
    b = tiny_imagenet.TinyImagenet(data_dir=data_dir)
    zip_path = _manual_dir(b) / tiny_imagenet.ZIP_NAME
    if not b.is_prepared() and not zip_path.exists():
      raise DatasetNotFoundError(_not_found_message(
          b, f'It is prepared automatically on first use once '
          f'{tiny_imagenet.ZIP_NAME} (from {tiny_imagenet.URL}) is at {zip_path}.'))
    return _prepare(b)
  # TFDS's own datasets: those it downloads by itself (CIFAR) are downloaded and prepared
  # on first use; a missing one of the others (ImageNet) fails in `as_dataset`, with
  # instructions.
  b = tfds.builder(spec.name, data_dir=data_dir)
  if not _downloads_itself(b) or _is_prepared(b):
    return b
  _download_and_prepare(b)
  # A fresh builder reads the prepared metadata (the splits), whichever process wrote it.
  return tfds.builder(spec.name, data_dir=data_dir)


@functools.lru_cache(maxsize=4)
def image_folder(root):
  """TFDS's ImageFolder builder of `root`, once per process: its walk takes seconds."""
  import_tensorflow()
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tfds.ImageFolder(root)


def as_dataset(b, split, **kwargs):
  """`b.as_dataset(split=split, ...)`; missing data raises DatasetNotFoundError."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    return b.as_dataset(split=split, **kwargs)
  except (AssertionError, tfds.core.DatasetNotFoundError) as e:
    if _is_prepared(b):  # Some other failure: not ours to explain.
      raise
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise DatasetNotFoundError(
        f'{_not_found_message(b, _how_to_prepare(b))}\n(TFDS: {reason})') from None


def load_split(spec, data_dir, split):
  """A whole split as numpy arrays: image uint8 [N, H, W, C], label int32 [N], ...

  Memory is O(split size); sizes come from the arrays themselves, not from
  `builder.info`, which is empty under `tfds.testing.mock_data`.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  keys = ('image', 'label') + (('coarse_label',) if spec.num_coarse_classes else ())
  ds = as_dataset(builder(spec, data_dir), split)
  ds = ds.map(lambda ex: {k: ex[k] for k in keys}).batch(_CHUNK)
  chunks = list(tfds.as_numpy(ds))
  if not chunks:
    raise errors.DataError(f'Split {split!r} of dataset {spec.name!r} is empty.')
  data = {k: np.concatenate([c[k] for c in chunks]) for k in keys}
  if data['image'].shape[1:] != spec.image_shape or data['image'].dtype != np.uint8:
    raise errors.DataError(
        f'Dataset {spec.name!r} split {split!r} has images {data["image"].dtype} '
        f'{data["image"].shape[1:]}, expected uint8 {spec.image_shape}.')
  return check_labels(data, spec)


def check_labels(batch, spec):
  """Labels as int32, after checking they are valid class indices of `spec`."""
  batch = dict(batch)
  for key, n in (('label', spec.num_classes), ('coarse_label', spec.num_coarse_classes)):
    if key in batch:
      bad = batch[key][(batch[key] < 0) | (batch[key] >= n)]
      if bad.size:
        raise errors.DataError(f'Dataset {spec.name!r} has {key} {bad[0]}, outside [0, {n}).')
      batch[key] = batch[key].astype(np.int32)
  return batch


def num_examples(spec, data_dir, split):
  """Examples in `split` of `spec` (before any `train_examples` subsetting)."""
  return split_size(builder(spec, data_dir), split)


def split_size(b, split):
  """Examples in `split`: from the prepared metadata, else counted by tf.data."""
  try:
    n = b.info.splits[split].num_examples
  except (KeyError, ValueError):  # No metadata: not prepared, or mocked.
    n = 0
  if n:
    return n
  n = int(as_dataset(b, split).cardinality())
  if n < 0:
    raise ValueError(f'Cannot count the examples of {b.name!r} split {split!r}.')
  return n


def _prepare(b):
  """Builds one of the project's own datasets offline, once."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  if not b.is_prepared():
    b.download_and_prepare(download_config=tfds.download.DownloadConfig(
        try_download_gcs=False, manual_dir=_manual_dir(b)))
  return b


def _manual_dir(b):
  # Where TFDS's download manager looks for manually downloaded files by default.
  return b.data_dir_root / 'downloads' / 'manual'


def _how_to_prepare(b):
  if not _downloads_itself(b):
    instructions = ' '.join(b.MANUAL_DOWNLOAD_INSTRUCTIONS.split())
    return (f'Put the manually downloaded files in {_manual_dir(b)} '
            f'({instructions}), then run\n  {_prepare_command(b)}')
  return (f'Prepare it on a machine with internet access:\n'
          f'  {_prepare_command(b)}\n'
          f'then copy the folder {b.data_dir_root / b.name} there to the same '
          f'place here.')


def _prepare_command(b):
  return (f'python -c "import tensorflow_datasets as tfds; '
          f'tfds.builder(\'{b.name}\', data_dir=\'{b.data_dir_root}\').download_and_prepare()"')


def _not_found_message(b, how):
  return (f'Dataset {b.name!r} is not prepared: TFDS looked in data_dir '
          f'{b.data_dir_root} (for {b.data_dir}). {how}')


# TFDS datasets that download themselves (CIFAR): downloaded and prepared on first use.

# A connection to the download's host that gets no answer fails after this long: offline
# machines often drop packets rather than refuse them.
_NETWORK_TIMEOUT_S = 10
# Held while TFDS's download methods are wrapped: threads preparing two datasets at once
# would otherwise restore each other's wrappers.
_WRAPPING = threading.Lock()


def _downloads_itself(b):
  """Whether TFDS fetches `b`'s data by itself (CIFAR), not from files that the user
  downloads by hand (ImageNet): the one test of which datasets `builder` downloads."""
  return not b.MANUAL_DOWNLOAD_INSTRUCTIONS


def _is_prepared(b):
  # TFDS's `is_prepared` logs a warning for a version folder that does not exist yet.
  return b.data_path.exists() and b.is_prepared()


def _download_and_prepare(b):
  """Downloads and prepares `b` into its data_dir, with TFDS's progress bars; without
  network, a one-line DatasetNotFoundError that says how to prepare it elsewhere.

  Every process of a run gets here, and data_dirs may be per host or shared. Processes
  of one machine take turns, so one downloads and the others then find the data
  prepared. Hosts sharing a data_dir download into folders of their own (see
  `_download_dir`), and TFDS writes the dataset into a temporary folder renamed into
  place at the end: the data_dir never holds half a dataset, and the host that loses
  that race uses the winner's.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  with _one_process_at_a_time(b):
    if _is_prepared(b):  # by another process of this machine, while this one waited
      return
    # No GCS copy (TFDS 4.9 disables them anyway): the data come from the dataset's own
    # address, which the check of `_network_checked_first` reaches first.
    config = tfds.download.DownloadConfig(try_download_gcs=False, manual_dir=_manual_dir(b))
    try:
      with _network_checked_first(b):
        b.download_and_prepare(download_dir=_download_dir(b), download_config=config)
    except Exception as e:  # pylint: disable=broad-except
      if _no_network(e):
        raise DatasetNotFoundError(_offline_message(b, e)) from None
      if isinstance(e, OSError) and _is_prepared(b):
        logging.info('Another process prepared %s first; using its copy.', b.name)
        return
      raise


@contextlib.contextmanager
def _one_process_at_a_time(b):
  """Holds this machine's lock on `b`'s dataset folder (blocking while another holds it).

  The lock file lives in the machine's temporary folder, not in the data_dir, which may
  be an object store or another machine's disk; the kernel releases it when its process
  ends, however it ends.
  """
  import fcntl  # pylint: disable=g-import-not-at-top
  key = hashlib.sha256(str(b.data_path).encode()).hexdigest()[:16]
  path = os.path.join(tempfile.gettempdir(), f'oracle_jax_tfds_{b.name}_{key}.lock')
  try:
    lock = open(path, 'a')  # pylint: disable=consider-using-with
  except OSError:  # another user's lock file: TFDS's renames still keep the data whole
    yield
    return
  with lock:
    try:
      fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      logging.warning('Waiting for another process of this machine, which prepares %s in %s.',
                      b.name, b.data_dir_root)
      fcntl.flock(lock, fcntl.LOCK_EX)
    yield  # closing the file releases the lock


def _download_dir(b):
  """TFDS's download folder, or one of its own for each process of a multi-process run:
  TFDS replaces an extracted archive that another host's process may still be reading,
  and the lock of `_one_process_at_a_time` does not reach other hosts."""
  import jax  # pylint: disable=g-import-not-at-top
  downloads = b.data_dir_root / 'downloads'
  if jax.process_count() == 1:
    return downloads
  return downloads / f'process_{jax.process_index()}'


@contextlib.contextmanager
def _network_checked_first(b):
  """Within it, TFDS's downloads first check in one quick request that the network is there.

  Offline, TFDS's downloader retries a connection ten times with growing pauses (3.4
  minutes), and it sets no timeout, so a connection whose packets are dropped waits
  forever. The check is one HEAD request with a timeout and no retries, through the same
  proxies (`HTTPS_PROXY`, ...) as TFDS's own requests, made before TFDS starts its
  progress bars. Files that TFDS takes from the manual folder need no network.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  manager = tfds.download.DownloadManager

  def checked(download):
    @functools.wraps(download)
    def check_then_download(self, url_or_urls, *args, **kwargs):
      for url in dict.fromkeys(_urls(url_or_urls)):
        if url.startswith(('http://', 'https://')) and not _in_manual_dir(b, url):
          _check_reachable(url)
      return download(self, url_or_urls, *args, **kwargs)
    return check_then_download

  with _WRAPPING, mock.patch.multiple(
      manager, download=checked(manager.download),
      download_and_extract=checked(manager.download_and_extract)):
    yield


def _urls(url_or_urls):
  """The URLs of what TFDS's download methods take: a URL, a Resource, a list or dict."""
  if isinstance(url_or_urls, dict):
    url_or_urls = list(url_or_urls.values())
  if isinstance(url_or_urls, (list, tuple)):
    return [url for item in url_or_urls for url in _urls(item)]
  return [str(getattr(url_or_urls, 'url', url_or_urls))]


def _in_manual_dir(b, url):
  # TFDS takes a file it would download from the manual folder when one there has the
  # name its registered checksums give.
  info = (b.url_infos or {}).get(url)
  return bool(info and info.filename and (_manual_dir(b) / info.filename).exists())


def _check_reachable(url):
  """Raises requests' ConnectionError or Timeout where `url`'s host cannot be reached.

  Any answer, even an HTTP error, means the network is there: TFDS reports those itself.
  """
  import requests  # pylint: disable=g-import-not-at-top  # TFDS's own HTTP client
  requests.head(url, timeout=_NETWORK_TIMEOUT_S)


def _no_network(e):
  """Whether `e`, or an exception it was raised from, is a connection that failed."""
  import requests  # pylint: disable=g-import-not-at-top
  for _ in range(10):  # a chain, never a cycle
    if e is None:
      return False
    if isinstance(e, (requests.ConnectionError, requests.Timeout)):
      return True
    e = e.__cause__
  return False


def _offline_message(b, e):
  """Today's not-found message, the archive's manual folder and the failure, in one line."""
  innermost = e
  for _ in range(10):
    if (innermost.__cause__ or innermost.__context__) is None:
      break
    innermost = innermost.__cause__ or innermost.__context__
  reason = f'{type(e).__name__} ({innermost})'  # the outer type, the innermost cause
  archives = [f'{info.filename} (from {url})' for url, info in (b.url_infos or {}).items()
              if info.filename]
  manual = (f' Or put {", ".join(archives)} in {_manual_dir(b)}: it is prepared from there '
            f'on first use.' if archives else '')
  text = f'{_not_found_message(b, _how_to_prepare(b))}{manual} (Download failed: {reason}.)'
  return ' '.join(text.split())  # one line: the command line prints it as it is
