"""scikit-learn's 8x8 handwritten digits as a TFDS dataset: 1,257 train / 540 test."""
import numpy as np
import tensorflow_datasets as tfds

NUM_TEST = 540


def load_arrays():
  """All 1,797 digits: images uint8 [N, 8, 8, 1] in 0..255, labels int64 [N]."""
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  digits = datasets.load_digits()
  # Pixel values are ink counts 0..16; rescale to the usual uint8 range.
  images = np.round(digits.images * 255 / 16).astype(np.uint8)[..., None]
  return images, digits.target.astype(np.int64)


def split_indices(labels):
  """A fixed, stratified split of the indices: (train, test), 1,257 / 540."""
  from sklearn import model_selection  # pylint: disable=g-import-not-at-top
  return model_selection.train_test_split(
      np.arange(len(labels)), test_size=NUM_TEST, stratify=labels, random_state=0)


class Digits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn's copy of the UCI optical handwritten digits (test part), 8x8."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(8, 8, 1)),
            'label': tfds.features.ClassLabel(num_classes=10),
        }),
        supervised_keys=('image', 'label'),
        homepage='https://scikit-learn.org/stable/datasets/toy_dataset.html',
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # The data ships with scikit-learn: nothing to download.
    images, labels = load_arrays()
    train, test = split_indices(labels)
    return {
        'train': self._generate_examples(images, labels, train),
        'test': self._generate_examples(images, labels, test),
    }

  def _generate_examples(self, images, labels, indices):
    # The index into load_digits() is a stable, unique key.
    for i in indices:
      yield int(i), {'image': images[i], 'label': labels[i]}
