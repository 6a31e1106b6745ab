"""ImageNet-shaped data without ImageNet, prepared by TFDS's own imagenet2012 builder.

`prepare(data_dir, ...)` writes the two ILSVRC2012 archives the builder asks for (JPEGs of
ImageNet's typical sizes, the real class names) into the manual download folder and lets
TFDS prepare them, so the result is read exactly as the real dataset is: the same
TFRecord files, features, splits and per-process shards. For tests and input-pipeline
benchmarks, and for trying a new pod or cluster end to end before copying ImageNet there.
"""
import io
import tarfile

import numpy as np
from PIL import Image

# (height, width) of ImageNet's most common image shapes.
_SHAPES = ((375, 500), (500, 375), (333, 500), (500, 333), (400, 400), (281, 500))


def jpeg(rng, height, width, quality=90):
  """A photo-like JPEG: a smooth colour field plus grain (noise alone would make files
  and decoding several times costlier than real photos')."""
  coarse = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
  smooth = np.asarray(coarse.resize((width, height), Image.BICUBIC), np.int16)
  grain = rng.integers(-10, 11, smooth.shape, dtype=np.int16)
  out = io.BytesIO()
  Image.fromarray(np.clip(smooth + grain, 0, 255).astype(np.uint8)).save(
      out, 'JPEG', quality=quality)
  return out.getvalue()


def _add(archive, name, payload):
  info = tarfile.TarInfo(name)
  info.size = len(payload)
  archive.addfile(info, io.BytesIO(payload))


def write_archives(manual_dir, *, classes, train_per_class, validation, shapes=_SHAPES,
                   seed=0):
  """ILSVRC2012_img_train.tar (a tar of one tar per class) and ILSVRC2012_img_val.tar."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  synsets = tfds.core.tfds_path('datasets/imagenet2012/labels.txt').read_text().split()
  rng = np.random.default_rng(seed)
  image = lambda: jpeg(rng, *shapes[rng.integers(len(shapes))])
  manual_dir.mkdir(parents=True, exist_ok=True)
  with tarfile.open(manual_dir / 'ILSVRC2012_img_train.tar', 'w') as train:
    for synset in synsets[:classes]:
      inner = io.BytesIO()
      with tarfile.open(fileobj=inner, mode='w') as per_class:
        for i in range(train_per_class):
          _add(per_class, f'{synset}_{i}.JPEG', image())
      _add(train, f'{synset}.tar', inner.getvalue())
  # The builder labels validation images by sorted name, from its own label list.
  with tarfile.open(manual_dir / 'ILSVRC2012_img_val.tar', 'w') as val:
    for i in range(1, validation + 1):
      _add(val, f'ILSVRC2012_val_{i:08d}.JPEG', image())


def prepare(data_dir, *, classes=4, train_per_class=8, validation=8, shapes=_SHAPES, seed=0):
  """A prepared imagenet2012 builder in `data_dir` (a local path) holding fake data."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from etils import epath  # pylint: disable=g-import-not-at-top
  manual_dir = epath.Path(data_dir) / 'downloads' / 'manual'
  write_archives(manual_dir, classes=classes, train_per_class=train_per_class,
                 validation=validation, shapes=shapes, seed=seed)
  builder = tfds.builder('imagenet2012', data_dir=str(data_dir))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=str(manual_dir), try_download_gcs=False))
  return builder
