"""ImageNet (imagenet2012) streamed from TFDS with tf.data; never held in memory.

Training is deterministic and resumable for a fixed number of processes: the
per-process shards come from `tfds.split_for_jax_process`, so they (and the
stream) change with the process count. Images stay JPEG bytes until after the
`skip` that resumes at `start_step`, so skipping reads records but decodes none.
Random crops and flips are stateless, seeded by (seed, process, stream position).
"""
import math

import jax
import tensorflow_datasets as tfds

from oracle_jax.data import sources
from oracle_jax.data.global_batches import local_batch_size

# This module is imported only when ImageNet is used; TF is hidden from the GPU
# before any TF op runs.
tf = sources.import_tensorflow()

_EVAL_RESIZE = 256  # torchvision's Resize(256) + CenterCrop(224).
_CROP_SCALE = (0.08, 1.0)  # torchvision's RandomResizedCrop defaults.
_CROP_RATIO = (3 / 4, 4 / 3)
_CROP_ATTEMPTS = 10


def train_iterator(spec, *, data_dir, global_batch_size, seed, start_step, augment):
  """This process's part of each training batch: image uint8 [b, 224, 224, 3]."""
  local = local_batch_size(global_batch_size, jax.process_count())
  options = tf.data.Options()
  options.deterministic = True
  ds = process_shard(sources.builder(spec, data_dir), 'train', shuffle_files=True,
                     read_config=tfds.ReadConfig(shuffle_seed=seed, options=options))
  # File-level shuffling mixes coarsely; the buffer (as in the Flax ImageNet
  # example) mixes within files. Both are seeded, so the stream is reproducible.
  ds = ds.repeat().shuffle(16 * local, seed=seed)
  ds = ds.enumerate().skip(start_step * local)
  size = spec.image_shape[:2]
  process_seed = tf.constant([seed, jax.process_index()], tf.int64)

  def preprocess(position, example):
    if augment:
      rng = tf.random.experimental.stateless_fold_in(process_seed, position)
      image = random_resized_crop_and_flip(example['image'], size, rng)
    else:
      image = resize_and_center_crop(tf.io.decode_jpeg(example['image'], channels=3), size)
    return {'image': image, 'label': example['label']}

  ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(local, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  return _numpy_batches(ds, spec)


def eval_iterator(spec, *, data_dir, global_batch_size, split):
  """One pass over `split`, padded so that every process yields as many batches."""
  local = local_batch_size(global_batch_size, jax.process_count())
  b = sources.builder(spec, data_dir)
  # even_splits gives shards of equal size +-1: the largest sets the batch count.
  shard = math.ceil(sources.split_size(b, split) / jax.process_count())
  ds = process_shard(b, split)
  size = spec.image_shape[:2]
  ds = ds.map(lambda ex: {
      'image': resize_and_center_crop(tf.io.decode_jpeg(ex['image'], channels=3), size),
      'label': ex['label'], 'mask': True}, num_parallel_calls=tf.data.AUTOTUNE)
  padding = tf.data.Dataset.from_tensors({
      'image': tf.zeros(size + (3,), tf.uint8), 'label': tf.constant(0, tf.int64),
      'mask': False}).repeat()
  ds = ds.concatenate(padding).take(math.ceil(shard / local) * local)
  return _numpy_batches(ds.batch(local).prefetch(tf.data.AUTOTUNE), spec)


def process_shard(b, split, *, process_index=None, process_count=None, **as_dataset_kwargs):
  """This process's shard of `split`, images as JPEG bytes: one of `process_count` (by
  default jax.process_count()) disjoint, even parts of its examples, so that each host
  reads only its part of the files. The process defaults to jax.process_index()."""
  shard = tfds.split_for_jax_process(split, process_index=process_index,
                                     process_count=process_count)
  return sources.as_dataset(b, shard, decoders={'image': tfds.decode.SkipDecoding()},
                            **as_dataset_kwargs)


def crop_window(image_shape, rng):
  """torchvision RandomResizedCrop's window (top, left, height, width), stateless.

  Ten candidate windows at once (area fraction uniform in _CROP_SCALE, aspect
  ratio log-uniform in _CROP_RATIO); the first that fits wins, else the
  torchvision fallback: the largest central crop with a ratio in range.
  """
  h = tf.cast(image_shape[0], tf.float32)
  w = tf.cast(image_shape[1], tf.float32)
  u = tf.random.stateless_uniform([4, _CROP_ATTEMPTS], rng)
  area = h * w * (_CROP_SCALE[0] + (_CROP_SCALE[1] - _CROP_SCALE[0]) * u[0])
  log_lo, log_hi = math.log(_CROP_RATIO[0]), math.log(_CROP_RATIO[1])
  ratio = tf.exp(log_lo + (log_hi - log_lo) * u[1])
  cw = tf.round(tf.sqrt(area * ratio))
  ch = tf.round(tf.sqrt(area / ratio))
  fits = (cw > 0) & (ch > 0) & (cw <= w) & (ch <= h)
  first = tf.argmax(tf.cast(fits, tf.int32))
  # Fallback, as torchvision: whole image, clipped to the ratio range, centred.
  in_ratio = w / h
  fw = tf.where(in_ratio < _CROP_RATIO[0], w,
                tf.where(in_ratio > _CROP_RATIO[1], tf.round(h * _CROP_RATIO[1]), w))
  fh = tf.where(in_ratio < _CROP_RATIO[0], tf.round(w / _CROP_RATIO[0]), h)
  found = tf.reduce_any(fits)
  ch = tf.where(found, ch[first], fh)
  cw = tf.where(found, cw[first], fw)
  # Offsets uniform over the integers 0..h-ch (torch.randint), centred if fallback.
  top = tf.where(found, tf.floor(u[2][first] * (h - ch + 1)), tf.round((h - ch) / 2))
  left = tf.where(found, tf.floor(u[3][first] * (w - cw + 1)), tf.round((w - cw) / 2))
  return tf.cast(tf.stack([top, left, ch, cw]), tf.int32)


def random_resized_crop_and_flip(jpeg, size, rng):
  """Decodes only the random window, resizes it to `size`, flips half the time."""
  crop_rng, flip_rng = tf.unstack(tf.random.experimental.stateless_split(rng, 2))
  window = crop_window(tf.image.extract_jpeg_shape(jpeg), crop_rng)
  image = tf.image.decode_and_crop_jpeg(jpeg, window, channels=3)
  image = _resize_uint8(image, size)
  flip = tf.random.stateless_uniform([], flip_rng) < 0.5
  return tf.where(flip, tf.reverse(image, axis=[1]), image)


def resize_and_center_crop(image, size):
  """torchvision Resize(256) (shorter side) + CenterCrop(224), for `size` 224."""
  shorter = round(size[0] * _EVAL_RESIZE / 224)
  shape = tf.cast(tf.shape(image)[:2], tf.float32)
  scale = shorter / tf.reduce_min(shape)
  # torchvision truncates the longer side: int(256 * long / short).
  new = tf.where(shape == tf.reduce_min(shape), float(shorter), tf.floor(shape * scale))
  image = _resize_uint8(image, tf.cast(new, tf.int32))
  top = tf.cast(tf.round((new[0] - size[0]) / 2), tf.int32)
  left = tf.cast(tf.round((new[1] - size[1]) / 2), tf.int32)
  return tf.image.crop_to_bounding_box(image, top, left, size[0], size[1])


def _resize_uint8(image, size):
  # Antialiased bilinear, like PIL's (torchvision's default) resize.
  image = tf.image.resize(image, size, method='bilinear', antialias=True)
  return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def _numpy_batches(ds, spec):
  for batch in tfds.as_numpy(ds):
    yield sources.check_labels(batch, spec)
