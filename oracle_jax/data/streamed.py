"""Datasets streamed from disk with tf.data, never held in memory: ImageNet (imagenet2012,
from its TFDS records) and folder datasets too large for memory or trained with
RandomResizedCrop (from their files).

Training is deterministic and resumable for a fixed number of processes: each process
reads its own shard (`tfds.split_for_jax_process`, or every n-th file of a folder), so
the shards (and the stream) change with the process count. Images stay encoded bytes (a
folder's: paths) until after the `skip` that resumes at `start_step`, so skipping reads
no image. Random crops and flips are stateless, seeded by (seed, process, position).
"""
import math

import jax
import numpy as np
import tensorflow_datasets as tfds

from oracle_jax.data import folder
from oracle_jax.data import sources
from oracle_jax.data import specs
from oracle_jax.data import transforms
from oracle_jax.data.global_batches import local_batch_size

# This module is imported only when a streamed dataset is used; TF is hidden from the GPU
# before any TF op runs.
tf = sources.import_tensorflow()


def train_iterator(spec, *, data_dir, global_batch_size, seed, start_step, augment):
  """This process's part of each training batch: image uint8 [b, H, W, 3]."""
  local = local_batch_size(global_batch_size, jax.process_count())
  ds = _train_records(spec, data_dir, seed, local)
  ds = ds.enumerate().skip(start_step * local)
  process_seed = tf.constant([seed, jax.process_index()], tf.int64)

  def preprocess(position, example):
    image_bytes = _image_bytes(example)
    rng = tf.random.experimental.stateless_fold_in(process_seed, position)
    return {'image': _train_image(spec, image_bytes, rng, augment), 'label': example['label']}

  ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(local, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  return _numpy_batches(ds, spec)


def eval_iterator(spec, *, data_dir, global_batch_size, split):
  """One pass over `split`, padded so that every process yields as many batches."""
  local = local_batch_size(global_batch_size, jax.process_count())
  ds, size = _eval_records(spec, data_dir, split)
  # Shards of equal size +-1: the largest sets the batch count.
  shard = math.ceil(size / jax.process_count())
  ds = ds.map(lambda ex: {'image': eval_image(spec, _image_bytes(ex)), 'label': ex['label'],
                          'mask': True}, num_parallel_calls=tf.data.AUTOTUNE)
  padding = tf.data.Dataset.from_tensors({
      'image': tf.zeros(spec.image_shape, tf.uint8), 'label': tf.constant(0, tf.int64),
      'mask': False}).repeat()
  ds = ds.concatenate(padding).take(math.ceil(shard / local) * local)
  return _numpy_batches(ds.batch(local).prefetch(tf.data.AUTOTUNE), spec)


def _train_records(spec, data_dir, seed, local):
  """This process's training examples, shuffled and repeated forever."""
  if specs.is_folder(spec.name):
    # Every epoch a fresh seeded permutation of the (cheap) paths.
    return _folder_shard(spec, 'train').shuffle(
        len(folder.read_layout(spec.name).files['train']), seed=seed,
        reshuffle_each_iteration=True).repeat()
  options = tf.data.Options()
  options.deterministic = True
  ds = process_shard(sources.builder(spec, data_dir), 'train', shuffle_files=True,
                     read_config=tfds.ReadConfig(shuffle_seed=seed, options=options))
  # File-level shuffling mixes coarsely; the buffer (as in the Flax ImageNet
  # example) mixes within files. Both are seeded, so the stream is reproducible.
  return ds.repeat().shuffle(16 * local, seed=seed)


def _eval_records(spec, data_dir, split):
  """This process's examples of `split`, and the split's size."""
  if specs.is_folder(spec.name):
    return _folder_shard(spec, split), len(folder.read_layout(spec.name).files[split])
  b = sources.builder(spec, data_dir)
  return process_shard(b, split), sources.split_size(b, split)


def _folder_shard(spec, split):
  """Every process_count-th file of a folder split, from this process's index on: the
  even, disjoint shards `tfds.split_for_jax_process` gives a TFDS split."""
  layout = folder.read_layout(spec.name)
  part = slice(jax.process_index(), None, jax.process_count())
  return tf.data.Dataset.from_tensor_slices(
      {'path': list(layout.files[split][part]),
       'label': layout.labels[split][part].astype(np.int64)})  # as TFDS's labels


def _image_bytes(example):
  return tf.io.read_file(example['path']) if 'path' in example else example['image']


def _train_image(spec, image_bytes, rng, augment):
  size = spec.image_shape[:2]
  if not augment or spec.augment == 'none':
    return eval_image(spec, image_bytes)
  if spec.augment == 'random_resized_crop':
    return transforms.random_resized_crop_and_flip(image_bytes, size, rng)
  image = transforms.resize_to(transforms.decode(image_bytes), size)
  return transforms.pad_crop_flip(image, spec.crop_padding, spec.flip, rng)


def eval_image(spec, image_bytes):
  """torchvision's Resize + CenterCrop for datasets trained with RandomResizedCrop; a
  plain resize to the model's size for the others."""
  size = spec.image_shape[:2]
  if spec.augment == 'random_resized_crop':
    return transforms.resize_and_center_crop(transforms.decode(image_bytes), size)
  return transforms.resize_to(transforms.decode(image_bytes), size)


def process_shard(b, split, *, process_index=None, process_count=None, **as_dataset_kwargs):
  """This process's shard of `split`, images as JPEG bytes: one of `process_count` (by
  default jax.process_count()) disjoint, even parts of its examples, so that each host
  reads only its part of the files. The process defaults to jax.process_index()."""
  shard = tfds.split_for_jax_process(split, process_index=process_index,
                                     process_count=process_count)
  return sources.as_dataset(b, shard, decoders={'image': tfds.decode.SkipDecoding()},
                            **as_dataset_kwargs)


def _numpy_batches(ds, spec):
  for batch in tfds.as_numpy(ds):
    yield sources.check_labels(batch, spec)
