"""Class-folder image datasets (`dataset='folder:DIR'`), read through TFDS's ImageFolder.

    DIR/train/<class>/*.jpg|*.jpeg|*.png     training
    DIR/test/ | DIR/val/ | DIR/validation/   evaluation (the first that exists)

Classes are the sorted sub-folder names; every split must hold every class. A folder is
scanned once (headers of every image, and the train split's exact per-channel statistics
when the config gives none); the scan is cached in `<data_dir>/folder_datasets/` (TFDS's
default data dir when `data_dir` is unset: the image folder itself may be read-only),
keyed by the folder's file list (paths and sizes), so an edited folder is scanned again.
"""
import dataclasses
import fractions
import functools
import hashlib
import json
import os

import numpy as np

from oracle_jax import errors, fileio, metrics_io
from oracle_jax.data import sources
from oracle_jax.data import specs

EVAL_SPLITS = ('test', 'val', 'validation')
AUGMENTATIONS = ('crop_flip', 'random_resized_crop', 'none')
_FORMATS = ('JPEG', 'PNG')  # what the file's own header says, whatever its extension
# One image of more pixels than this is refused before it is decoded: far beyond any
# photograph a classifier trains on, far below what a decompression bomb asks for.
_MAX_PIXELS = 2 ** 26
_CROP_FLIP_MAX_SIDE = 64  # CIFAR's pad-crop-flip up to Tiny-ImageNet's size; RRC above
_SCAN_VERSION = 1  # bump when the cached record's meaning changes
_STATS_BATCH = 256
_LOAD_BATCH = 1024  # also how many files an undecodable one is looked for among


@dataclasses.dataclass(frozen=True)
class Layout:
  """What the folder holds: for each split, its files and their labels (ImageFolder's
  deterministic order), and the class names."""
  root: str
  classes: tuple
  files: dict   # split -> tuple of paths
  labels: dict  # split -> int array


def spec(config):
  """The DatasetSpec of `config.dataset = 'folder:DIR'`; bad folders raise one-line
  DataErrors naming the path and the fix, bad keys ConfigErrors."""
  return _spec(config.dataset, config.data_dir, tuple(config.get('image_size', ())),
               tuple(config.get('data_mean', ())), tuple(config.get('data_std', ())),
               config.get('eval_split', ''), config.get('augment', ''),
               float(config.get('in_memory_gb', 4.0)))


@functools.lru_cache(maxsize=8)  # a run, its validation and its sweep ask many times
def _spec(dataset, data_dir, requested_size, mean, std, eval_split, augment, in_memory_gb):
  layout = read_layout(dataset)
  eval_split = choose_eval_split(layout, eval_split)
  scan = scanned(layout, data_dir, need_stats=not mean)
  size = image_size(layout, scan, requested_size)
  augment = augment or (
      'crop_flip' if max(size) <= _CROP_FLIP_MAX_SIDE else 'random_resized_crop')
  if augment not in AUGMENTATIONS:
    raise errors.ConfigError(f'augment must be one of {AUGMENTATIONS} (or empty for the '
                             f'default of the image size), got {augment!r}.')
  in_memory = len(layout.files['train']) * size[0] * size[1] * 3 <= in_memory_gb * 2 ** 30
  return specs.DatasetSpec(
      dataset, len(layout.classes), (*size, 3), mean or tuple(scan['mean']),
      std or tuple(scan['std']), 0, eval_split, False,
      streamed=augment == 'random_resized_crop' or not in_memory, augment=augment,
      class_names=layout.classes)


@functools.lru_cache(maxsize=4)
def read_layout(dataset):
  """The folder's splits, files, labels and classes, checked: one line per mistake."""
  root = specs.folder_root(dataset)
  if not os.path.isdir(root):
    raise errors.DataError(f'Folder dataset {root} does not exist; --config.dataset=folder:DIR '
                           'needs DIR/train/<class>/<images> and DIR/test/<class>/<images>.')
  if not os.path.isdir(os.path.join(root, 'train')):
    raise errors.DataError(f'Folder dataset {root} has no train/ folder; put the training '
                           f'images in {root}/train/<class>/.')
  b = sources.image_folder(root)
  classes = tuple(b.info.features['label'].names)
  index = {name: i for i, name in enumerate(classes)}
  files, labels = {}, {}
  for split in b.info.splits:
    examples = b._split_examples[split]  # pylint: disable=protected-access  (ImageFolder's list)
    files[split] = tuple(e.image_path for e in examples)
    labels[split] = np.array([index[e.label] for e in examples], np.int32)
  layout = Layout(root, classes, files, labels)
  _check_classes(layout)
  return layout


def _check_classes(layout):
  if len(layout.classes) < 2:
    raise errors.DataError(
        f'Folder dataset {layout.root} has {len(layout.classes)} class folder(s) in its '
        'splits; a classifier needs at least 2 (DIR/train/<class>/ for each class).')
  if 'train' not in layout.files:
    raise errors.DataError(f'Split {layout.root}/train/ holds no images (.jpg, .jpeg or .png '
                           'in its class folders); put the training images there.')
  for split, labels in layout.labels.items():
    if not labels.size:
      raise errors.DataError(f'Split {layout.root}/{split}/ holds no images (.jpg, .jpeg or '
                             '.png in its class folders); add them or remove the folder.')
    counts = np.bincount(labels, minlength=len(layout.classes))
    if not counts.all():
      missing = layout.classes[int(np.argmin(counts))]
      raise errors.DataError(
          f'Class {missing!r} has no images in {layout.root}/{split}/ (other splits have it); '
          f'every split needs the same class folders: add {split}/{missing}/ images or '
          'remove the class everywhere.')


def choose_eval_split(layout, requested):
  if requested:
    if requested not in layout.files:
      raise errors.DataError(f'eval_split {requested!r}: {layout.root}/{requested}/ holds no '
                             f'images; its splits are {", ".join(sorted(layout.files))}.')
    return requested
  for split in EVAL_SPLITS:
    if split in layout.files:
      return split
  raise errors.DataError(
      f'Folder dataset {layout.root} has no evaluation split: add images in one of '
      f'{", ".join(s + "/" for s in EVAL_SPLITS)} (or set --config.eval_split).')


def image_size(layout, scan, requested):
  """`requested` (H, W), else the one size every training image has."""
  if requested:
    return tuple(int(v) for v in requested)
  sizes = scan['sizes']['train']
  if len(sizes) > 1:
    shown = ', '.join(f'{h}x{w}' for h, w in sizes[:3])
    raise errors.DataError(
        f'The images of {layout.root}/train/ have {len(sizes)} sizes ({shown}, ...); set '
        "--config.image_size='(H,W)' to resize them all to one.")
  return tuple(sizes[0])


def scanned(layout, data_dir, *, need_stats):
  """The folder's scan record (image sizes per split; the train split's `mean`/`std` if
  `need_stats`), from the cache when its file list is unchanged."""
  path = _cache_path(layout, data_dir)
  record = _read_cache(path)
  changed = record is None
  if changed:
    record = {'version': _SCAN_VERSION, 'root': layout.root,
              'sizes': {split: check_headers(layout, split) for split in sorted(layout.files)}}
  if need_stats and 'mean' not in record:
    record.update(statistics(layout))
    changed = True
  if changed:
    fileio.write_json(path, record)
  return record


def _cache_path(layout, data_dir):
  digest = hashlib.sha256()
  for split in sorted(layout.files):
    for f in layout.files[split]:
      digest.update(f'{os.path.relpath(f, layout.root)}\0{os.path.getsize(f)}\n'.encode())
  base = fileio.path(data_dir or _tfds_data_dir())
  name = os.path.basename(layout.root.rstrip('/')) or 'root'
  return base / 'folder_datasets' / f'{name}-{digest.hexdigest()[:20]}.json'


def _tfds_data_dir():
  return os.environ.get('TFDS_DATA_DIR') or os.path.join('~', 'tensorflow_datasets')


def _read_cache(path):
  """The cached record, or None if absent or not one this version wrote."""
  if not path.exists():
    return None
  try:
    record = json.loads(path.read_text())
  except (ValueError, OSError):
    return None
  return record if isinstance(record, dict) and record.get('version') == _SCAN_VERSION else None


def check_headers(layout, split):
  """The distinct (H, W) of a split's images, the most frequent first; every header read
  (not decoded), its format and size bounded: a bad file is named before training."""
  counts = {}
  with metrics_io.progress_bar(len(layout.files[split]), 'img', desc=f'scanning {split}') as bar:
    for path in layout.files[split]:
      size = image_header_size(path)
      counts[size] = counts.get(size, 0) + 1
      bar.update()
  return [list(s) for s, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


def image_header_size(path):
  """(H, W) of the JPEG or PNG at `path`, from its header; anything else a DataError."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(path) as image:
      fmt, (w, h) = image.format, image.size
  except (OSError, ValueError, Image.DecompressionBombError) as e:
    raise errors.DataError(f'Cannot read image {path} ({e}); delete or replace it.') from None
  if fmt not in _FORMATS:
    raise errors.DataError(f'Image {path} is {fmt}, not JPEG or PNG; convert or remove it.')
  if h * w > _MAX_PIXELS:
    raise errors.DataError(f'Image {path} has {h}x{w} pixels, more than {_MAX_PIXELS}; '
                           'shrink it or remove it.')
  return h, w


def statistics(layout):
  """Exact per-channel mean and population std, in [0, 1] units, of every pixel of the
  train split (as the pipeline decodes them, before any resizing)."""
  from oracle_jax.data import transforms  # pylint: disable=g-import-not-at-top  (imports TF)
  tf = transforms.tf
  files = layout.files['train']
  ds = tf.data.Dataset.from_tensor_slices(list(files)).map(
      lambda f: _pixel_sums(transforms.decode(tf.io.read_file(f))),
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(_STATS_BATCH)
  total, squares, count = [0] * 3, [0] * 3, 0
  for s, s2, n in _checked_batches(ds, files, _STATS_BATCH, 'statistics of train'):
    # Python ints: exact however many pixels (a batch's int64 sums cannot overflow).
    total = [t + int(v) for t, v in zip(total, s.sum(0))]
    squares = [t + int(v) for t, v in zip(squares, s2.sum(0))]
    count += int(n.sum())
  mean = [fractions.Fraction(t, count) for t in total]
  var = [fractions.Fraction(q, count) - m * m for q, m in zip(squares, mean)]
  return {'mean': [float(m / 255) for m in mean],
          'std': [float(np.sqrt(float(v)) / 255) for v in var]}


def _pixel_sums(image):
  from oracle_jax.data import transforms  # pylint: disable=g-import-not-at-top  (imports TF)
  tf = transforms.tf
  pixels = tf.reshape(tf.cast(image, tf.int64), [-1, 3])
  return tf.reduce_sum(pixels, 0), tf.reduce_sum(pixels * pixels, 0), tf.shape(pixels)[0]


def _checked_batches(ds, files, batch_size, desc):
  """The numpy batches of `ds` (of `files`, in order, `batch_size` each) with a progress
  bar; an image TensorFlow cannot decode becomes a DataError naming its file."""
  from oracle_jax.data import transforms  # pylint: disable=g-import-not-at-top  (imports TF)
  it = ds.as_numpy_iterator()
  with metrics_io.progress_bar(len(files), 'img', desc=desc) as bar:
    for start in range(0, len(files), batch_size):
      try:
        batch = next(it)
      except transforms.tf.errors.InvalidArgumentError:
        raise errors.DataError(_undecodable(files[start:start + batch_size])) from None
      bar.update(min(batch_size, len(files) - start))
      yield batch


def _undecodable(files):
  """The message naming the first of `files` that TensorFlow cannot decode."""
  from oracle_jax.data import transforms  # pylint: disable=g-import-not-at-top  (imports TF)
  tf = transforms.tf
  for f in files:
    try:
      transforms.decode(tf.io.read_file(f))
    except tf.errors.InvalidArgumentError as e:
      reason = str(e).splitlines()[0] if str(e) else 'undecodable'
      return f'Cannot decode image {f} ({reason}); delete or replace it.'
  return f'Cannot decode one of {len(files)} images from {files[0]} on.'


def load_split(spec, split):
  """A whole split in memory, every image resized to the spec's size: image uint8
  [N, H, W, 3] and label int32 [N], in ImageFolder's (deterministic) order."""
  from oracle_jax.data import transforms  # pylint: disable=g-import-not-at-top  (imports TF)
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  tf = transforms.tf
  files = read_layout(spec.name).files[split]
  size = spec.image_shape[:2]
  # ImageFolder's records, decoded as torchvision decodes them (transforms.decode).
  ds = sources.as_dataset(sources.builder(spec, None), split,
                          decoders={'image': tfds.decode.SkipDecoding()}).map(
      lambda ex: {'image': transforms.resize_to(transforms.decode(ex['image']), size),
                  'label': ex['label']},
      num_parallel_calls=tf.data.AUTOTUNE).batch(_LOAD_BATCH)
  chunks = list(_checked_batches(ds, files, _LOAD_BATCH, f'loading {split}'))
  return sources.check_labels(
      {k: np.concatenate([c[k] for c in chunks]) for k in ('image', 'label')}, spec)
