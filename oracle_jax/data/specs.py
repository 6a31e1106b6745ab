"""What the model needs to know about each dataset, and the on-device normalization."""
import dataclasses
import os

import jax.numpy as jnp
import numpy as np

from oracle_jax import errors


# `dataset='folder:DIR'`: a class-folder dataset (folder.py).
FOLDER_PREFIX = 'folder:'


def is_folder(name):
  return name.startswith(FOLDER_PREFIX)


def folder_root(name):
  """The absolute directory of `folder:DIR`."""
  return os.path.abspath(os.path.expanduser(name[len(FOLDER_PREFIX):]))


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """A dataset as the model sees it; the pipeline reads it from TFDS by `name`."""
  name: str
  num_classes: int
  image_shape: tuple  # (H, W, C) of the batches the model gets.
  mean: tuple  # Per channel, in [0, 1] units: x = (u8 / 255 - mean) / std.
  std: tuple
  num_coarse_classes: int  # CIFAR-100's 20 superclasses; 0 elsewhere.
  eval_split: str
  manual: bool  # The raw files must be fetched by hand (no public download URL).
  # Read from disk batch by batch (tf.data, streamed.py) rather than
  # held in host memory (pipeline.py, random crop of `crop_padding` + `flip`).
  streamed: bool = False
  crop_padding: int = 4  # The official code's RandomCrop(padding=4) + flip.
  flip: bool = True
  # Training augmentation: 'crop_flip' (the above), 'random_resized_crop' (ImageNet's,
  # streamed only) or 'none'.
  augment: str = 'crop_flip'
  class_names: tuple = ()  # folder datasets' class folders, in label order


def _specs():
  return {s.name: s for s in (
      # The mean/std of the 1,257 train images of the project's digits split,
      # computed once from the prepared data with
      #   x = np.concatenate([b['image'] for b in tfds.as_numpy(
      #           Digits().as_dataset(split='train', batch_size=2000))])
      #   (x / 255).mean(), (x / 255).std()  # float64, population std
      # = 0.305604, 0.375962; tests/test_data.py recomputes them.
      # Digits move by at most one pixel and are not left-right symmetric.
      DatasetSpec('digits', 10, (8, 8, 1), (0.3056,), (0.3760,), 0, 'test', False,
                  crop_padding=1, flip=False),
      # The official oracle-KD code's CIFAR-10 transforms (`dataset.py`; true per-channel
      # train statistics, unlike the common (0.2023, 0.1994, 0.2010) std).
      DatasetSpec('cifar10', 10, (32, 32, 3), (0.4914, 0.4822, 0.4465),
                  (0.2470, 0.2435, 0.2616), 0, 'test', False),
      # RepDistiller's CIFAR-100 transforms (dataset/cifar100.py), which the
      # official oracle-KD code (`dataset.py`) and its released teachers use.
      DatasetSpec('cifar100', 100, (32, 32, 3), (0.5071, 0.4867, 0.4408),
                  (0.2675, 0.2565, 0.2761), 20, 'test', False),
      # The official oracle-KD code's Tiny-ImageNet transforms (`dataset.py` @ c08dbfb):
      # mean as the common train statistics, std (0.2764, 0.2689, 0.2816), not the
      # (0.2302, 0.2265, 0.2262) common elsewhere, which this spec used before.
      DatasetSpec('tiny_imagenet', 200, (64, 64, 3), (0.4802, 0.4481, 0.3975),
                  (0.2764, 0.2689, 0.2816), 0, 'validation', True),
      # torchvision's ImageNet statistics, which torchvision-trained teachers expect.
      DatasetSpec('imagenet2012', 1000, (224, 224, 3), (0.485, 0.456, 0.406),
                  (0.229, 0.224, 0.225), 0, 'validation', True, streamed=True,
                  augment='random_resized_crop'),
  )}


def record(spec):
  """What results and model checkpoints record of a run's data, so that a model can be
  used without the dataset at hand: its input size, normalisation and class names."""
  out = dict(image_size=list(spec.image_shape[:2]), data_mean=list(spec.mean),
             data_std=list(spec.std))
  return {**out, 'class_names': list(spec.class_names)} if spec.class_names else out


def dataset_spec(name):
  """Returns the DatasetSpec of `name`; a ValueError lists the known names."""
  specs = _specs()
  if name not in specs:
    raise errors.ConfigError(
        f'Unknown dataset {name!r}; known datasets: {", ".join(sorted(specs))}.')
  return specs[name]


def normalize(images_uint8, spec):
  """uint8 [..., C] -> float32 (u8 / 255 - mean) / std, bit for bit as torchvision.

  torchvision's ToTensor divides by 255 in float32 and Normalize then subtracts
  and divides by the float32 mean/std. XLA rewrites a division by a constant
  into a multiplication by its reciprocal, which is off by an ulp for about half
  the values; so the 256 possible values per channel are computed once on the
  host in IEEE float32 (numpy) and looked up on device: exact on every backend.
  """
  mean = np.asarray(spec.mean, np.float32)
  std = np.asarray(spec.std, np.float32)
  table = (np.arange(256, dtype=np.float32)[:, None] / np.float32(255) - mean) / std
  images = jnp.asarray(images_uint8).astype(jnp.int32)
  return jnp.asarray(table)[images, jnp.arange(len(spec.mean))]
