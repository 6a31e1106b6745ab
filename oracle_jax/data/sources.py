"""Finding, preparing and reading the TFDS data behind a DatasetSpec."""
import numpy as np

from oracle_jax import errors, fileio

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
  # TFDS's own datasets are never downloaded here (there may be no internet):
  # a missing one fails in `as_dataset` with instructions.
  return tfds.builder(spec.name, data_dir=data_dir)


def as_dataset(b, split, **kwargs):
  """`b.as_dataset(split=split, ...)`; missing data raises DatasetNotFoundError."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    return b.as_dataset(split=split, **kwargs)
  except (AssertionError, tfds.core.DatasetNotFoundError) as e:
    if b.is_prepared():  # Some other failure: not ours to explain.
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
  if b.MANUAL_DOWNLOAD_INSTRUCTIONS:
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
