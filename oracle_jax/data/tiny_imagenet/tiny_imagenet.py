"""Tiny-ImageNet-200 as a TFDS dataset, read straight from the official zip.

Train: 100,000 images (500 per class); validation: 10,000 images (50 per class)
labelled by val/val_annotations.txt. All images are 64x64 JPEGs; the few grayscale
ones are decoded with three channels, as torchvision's `.convert('RGB')` does.
"""
import posixpath
import zipfile

import tensorflow_datasets as tfds

from oracle_jax import errors

ZIP_NAME = 'tiny-imagenet-200.zip'
URL = 'http://cs231n.stanford.edu/tiny-imagenet-200.zip'
IMAGE_SHAPE = (64, 64, 3)
NUM_CLASSES = 200
_ROOT = 'tiny-imagenet-200'
_WNIDS = f'{_ROOT}/wnids.txt'
_VAL_ANNOTATIONS = f'{_ROOT}/val/val_annotations.txt'


class TinyImagenet(tfds.core.GeneratorBasedBuilder):
  """Tiny-ImageNet-200 (CS231n), 200 classes of 64x64 images."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f'Download {URL} and place the zip file, unextracted, at '
      f'<data_dir>/downloads/manual/{ZIP_NAME} (the builder\'s manual_dir).')

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            # The JPEG bytes are stored as they are in the zip: no re-encoding loss.
            'image': tfds.features.Image(shape=IMAGE_SHAPE, encoding_format='jpeg'),
            'label': tfds.features.ClassLabel(num_classes=NUM_CLASSES),
        }),
        supervised_keys=('image', 'label'),
        homepage='http://cs231n.stanford.edu/',
    )

  def _split_generators(self, dl_manager):
    path = dl_manager.manual_dir / ZIP_NAME
    labels = read_labels(path)
    return {
        'train': self._generate_examples(path, labels, 'train'),
        'validation': self._generate_examples(path, labels, 'val'),
    }

  def _generate_examples(self, path, labels, split):
    count = 0
    with path.open('rb') as f, zipfile.ZipFile(f) as zf:
      for name in zf.namelist():
        label = member_label(name, split, labels)
        if label is None:
          continue
        data = zf.read(name)
        check_image(path, name, data)
        count += 1
        # File names (n01443537_0.JPEG, val_0.JPEG) are unique within a split.
        yield posixpath.basename(name), {'image': data, 'label': label}
    if not count:
      raise errors.DataError(f'{path} holds no {split} images under {_ROOT}/{split}/.')


def read_labels(path):
  """{'wnids': {wnid: label}, 'val': {file name: label}} from the zip's index files.

  Labels are the positions of the wnids in sorted order, as torchvision's
  ImageFolder assigns them.
  """
  try:
    with path.open('rb') as f, zipfile.ZipFile(f) as zf:
      wnids_txt = _read_member(zf, path, _WNIDS)
      annotations = _read_member(zf, path, _VAL_ANNOTATIONS)
  except zipfile.BadZipFile:
    raise errors.DataError(f'{path} is not a zip file; expected the official {ZIP_NAME} '
                     f'from {URL}.') from None
  wnids = sorted(set(wnids_txt.split()))
  if not 0 < len(wnids) <= NUM_CLASSES:
    raise errors.DataError(f'{path}: {_WNIDS} lists {len(wnids)} class ids, '
                     f'expected 1..{NUM_CLASSES}.')
  label_of = {wnid: i for i, wnid in enumerate(wnids)}
  val = {}
  for line in annotations.splitlines():
    if line.strip():
      file_name, wnid = line.split('\t')[:2]
      if wnid not in label_of:
        raise errors.DataError(f'{path}: {_VAL_ANNOTATIONS} labels {file_name} with '
                         f'{wnid}, which is not in {_WNIDS}.')
      val[file_name] = label_of[wnid]
  return {'wnids': label_of, 'val': val}


def member_label(name, split, labels):
  """The label of zip member `name` if it is an image of `split`, else None."""
  parts = name.split('/')
  if not name.endswith('.JPEG') or parts[:2] != [_ROOT, split]:
    return None
  if split == 'train' and len(parts) == 5 and parts[3] == 'images':
    if parts[2] not in labels['wnids']:
      raise errors.DataError(f'Train image {name} is in class {parts[2]}, which is '
                       f'not in {_WNIDS}.')
    return labels['wnids'][parts[2]]
  if split == 'val' and len(parts) == 4 and parts[2] == 'images':
    if parts[3] not in labels['val']:
      raise errors.DataError(f'Validation image {name} has no line in {_VAL_ANNOTATIONS}.')
    return labels['val'][parts[3]]
  return None


def check_image(path, name, data):
  """Fails at preparation, not in training, on an image that is not 64x64."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  shape = tuple(tf.io.decode_image(data, channels=3, expand_animations=False).shape)
  if shape != IMAGE_SHAPE:
    raise errors.DataError(f'{path}: {name} decodes to shape {shape}, expected {IMAGE_SHAPE}.')


def _read_member(zf, path, member):
  try:
    return zf.read(member).decode('utf-8')
  except KeyError:
    raise errors.DataError(f'{path} has no {member}: not the official {ZIP_NAME} '
                     f'from {URL}?') from None
