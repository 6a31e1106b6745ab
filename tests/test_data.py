"""Tests of oracle_jax.data: the datasets, the determinism and the process slicing."""
import pathlib
import zipfile

import jax
import numpy as np
import pytest

from oracle_jax import data
from oracle_jax.data import augment
from oracle_jax.data import global_batches
from oracle_jax.data import pipeline
from oracle_jax.data import sources

tf = sources.import_tensorflow()
import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top,wrong-import-position

REFERENCE_DIR = pathlib.Path(__file__).parent / 'data' / 'reference'
DIGITS = data.dataset_spec('digits')


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  """A TFDS data_dir holding the real digits dataset, prepared on first use."""
  path = tmp_path_factory.mktemp('tfds')
  data.num_examples(DIGITS, str(path), 'train')
  return str(path)


@pytest.fixture(scope='module')
def digits_train(data_dir):
  return sources.load_split(DIGITS, data_dir, 'train')


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def _rows(images, labels):
  """Examples as sortable byte strings, to compare datasets as multisets."""
  return sorted(im.tobytes() + bytes([int(l)]) for im, l in zip(images, labels))


# Specs and normalization.

def test_unknown_dataset_lists_known_names():
  with pytest.raises(ValueError, match=r"'mnist'.*cifar10, cifar100, digits, "
                     r'imagenet2012, tiny_imagenet'):
    data.dataset_spec('mnist')


def test_how_each_dataset_is_read_and_augmented():
  names = ('digits', 'cifar10', 'cifar100', 'tiny_imagenet', 'imagenet2012')
  specs = [data.dataset_spec(n) for n in names]
  assert [s.streamed for s in specs] == [False, False, False, False, True]
  assert [pipeline.augmentation(s) for s in specs[:4]] == [(1, False)] + [(4, True)] * 3
  assert [s.eval_split for s in specs] == ['test'] * 3 + ['validation'] * 2


@pytest.mark.parametrize('name', ['digits', 'cifar10', 'cifar100', 'tiny_imagenet',
                                  'imagenet2012'])
def test_normalize_is_torchvision_float32_formula(name):
  spec = data.dataset_spec(name)
  u8 = np.random.default_rng(0).integers(0, 256, (4, 5, 5, spec.image_shape[-1]),
                                         dtype=np.uint8)
  expected = ((u8.astype(np.float32) / np.float32(255)
               - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32))
  np.testing.assert_array_equal(data.normalize(u8, spec), expected)
  np.testing.assert_array_equal(jax.jit(data.normalize, static_argnums=1)(u8, spec),
                                expected)


@pytest.mark.parametrize('case,name', [('cifar100_r32_r20', 'cifar100'),
                                       ('cifar10_r20_r20', 'cifar10')])
def test_normalize_reproduces_pytorch_inputs(case, name):
  z = np.load(REFERENCE_DIR / f'{case}.npz')
  np.testing.assert_array_equal(
      data.normalize(z['images_uint8'], data.dataset_spec(name)), z['x_nhwc'])


# The digits dataset.

def test_digits_split_sizes_and_balance(data_dir, digits_train):
  test = sources.load_split(DIGITS, data_dir, 'test')
  assert data.num_examples(DIGITS, data_dir, 'train') == 1257
  assert data.num_examples(DIGITS, data_dir, 'test') == 540
  assert digits_train['image'].shape == (1257, 8, 8, 1)
  assert test['image'].shape == (540, 8, 8, 1)
  assert digits_train['image'].dtype == np.uint8
  assert digits_train['image'].min() == 0 and digits_train['image'].max() == 255
  assert digits_train['label'].dtype == np.int32
  # Stratified: each class's share of the test split is its share of all data.
  all_counts = np.bincount(np.concatenate([digits_train['label'], test['label']]))
  assert np.all(np.abs(np.bincount(test['label']) - all_counts * 540 / 1797) <= 1)


def test_digits_split_is_fixed_and_from_sklearn(digits_train):
  from oracle_jax.data.digits import digits  # pylint: disable=g-import-not-at-top
  images, labels = digits.load_arrays()
  train, test = digits.split_indices(labels)
  train2, _ = digits.split_indices(labels)
  np.testing.assert_array_equal(train, train2)
  assert len(set(train) | set(test)) == 1797
  assert (_rows(images[train], labels[train])
          == _rows(digits_train['image'], digits_train['label']))


def test_digits_mean_std_recomputed(digits_train):
  x = digits_train['image'] / 255
  np.testing.assert_allclose(DIGITS.mean, [x.mean()], atol=5e-5)
  np.testing.assert_allclose(DIGITS.std, [x.std()], atol=5e-5)


# Training stream: determinism, resumption, subsets, augmentation.

def test_train_iterator_deterministic_per_seed(data_dir):
  def batches(seed):
    return _take(data.train_iterator(DIGITS, data_dir=data_dir, global_batch_size=64,
                                     seed=seed), 3)
  _assert_batches_equal(batches(0), batches(0))
  assert not np.array_equal(batches(0)[0]['image'], batches(1)[0]['image'])
  assert not np.array_equal(batches(0)[0]['label'], batches(1)[0]['label'])


def test_start_step_equals_skipping(data_dir):
  # 1257 / 128: batch 9 spans the first and second epochs.
  kwargs = dict(data_dir=data_dir, global_batch_size=128, seed=3)
  fresh = _take(data.train_iterator(DIGITS, **kwargs), 12)
  resumed = _take(data.train_iterator(DIGITS, start_step=9, **kwargs), 3)
  _assert_batches_equal(fresh[9:], resumed)


def _indexed(n, num_classes=10):
  """Synthetic in-memory data whose `index` says which example a row is."""
  rng = np.random.default_rng(1)
  return {'image': rng.integers(0, 256, (n, 6, 6, 3), dtype=np.uint8),
          'label': (np.arange(n) % num_classes).astype(np.int32),
          'index': np.arange(n)}


def test_every_epoch_sees_every_example_once():
  n = 50
  batches = _take(pipeline.train_batches(
      _indexed(n), global_batch_size=8, seed=0, start_step=0, augmentation=None,
      process_index=0, process_count=1), 25)  # 200 positions = 4 epochs.
  seen = np.concatenate([b['index'] for b in batches])
  for epoch in range(4):
    assert sorted(seen[epoch * n:(epoch + 1) * n]) == list(range(n))
  assert not np.array_equal(seen[:n], seen[n:2 * n])  # Reshuffled each epoch.


def test_train_examples_subset_is_stratified_and_seed_independent(data_dir, digits_train):
  subset = pipeline.stratified_subset(digits_train['label'], 250)
  assert len(np.unique(subset)) == 250
  counts = np.bincount(digits_train['label'])
  assert np.all(np.abs(np.bincount(digits_train['label'][subset]) - counts * 250 / 1257)
                <= 1)
  expected = _rows(digits_train['image'][subset], digits_train['label'][subset])

  def first_epoch(seed):
    batches = _take(data.train_iterator(
        DIGITS, data_dir=data_dir, global_batch_size=50, seed=seed, augment=False,
        train_examples=250), 5)
    return np.concatenate([b['image'] for b in batches]), np.concatenate(
        [b['label'] for b in batches])

  images0, labels0 = first_epoch(0)
  images1, labels1 = first_epoch(1)
  assert _rows(images0, labels0) == expected == _rows(images1, labels1)
  assert not np.array_equal(labels0, labels1)  # Same subset, other order.
  with pytest.raises(ValueError, match='train_examples'):
    pipeline.stratified_subset(digits_train['label'], 1258)


def _crops(padded, size):
  """Every size x size crop of `padded` [H, W, C]: unflipped, then flipped."""
  shifts = padded.shape[0] - size + 1
  crops = [padded[dy:dy + size, dx:dx + size]
           for dy in range(shifts) for dx in range(shifts)]
  return crops + [c[:, ::-1] for c in crops]


def _matching_crops(original, augmented, pad):
  """Indices into `_crops` of the crops of padded `original` equal to `augmented`."""
  padded = np.pad(original, ((pad, pad), (pad, pad), (0, 0)))
  return [j for j, crop in enumerate(_crops(padded, original.shape[0]))
          if np.array_equal(crop, augmented)]


def test_digits_augmentation_only_shifts_by_one_pixel(data_dir):
  kwargs = dict(data_dir=data_dir, global_batch_size=128, seed=5, start_step=2)
  plain = next(data.train_iterator(DIGITS, augment=False, **kwargs))
  shifted = next(data.train_iterator(DIGITS, augment=True, **kwargs))
  np.testing.assert_array_equal(plain['label'], shifted['label'])
  used = set()
  for original, augmented in zip(plain['image'], shifted['image']):
    # The 9 unflipped crops (a flip of a digit would be the crops 9..17).
    matches = {j for j in _matching_crops(original, augmented, pad=1) if j < 9}
    assert matches, 'an augmented digit is not a 1-pixel shift of its original'
    used |= matches
  assert len(used) == 9  # All nine shifts occur.


def test_cifar_augmentation_is_pad4_crop_and_flip():
  images = np.random.default_rng(0).integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
  out = augment.pad_crop_flip(images, augment.example_bits(7, np.arange(64)),
                              pad=4, flip=True)
  flipped = []
  for original, augmented in zip(images, out):
    matches = _matching_crops(original, augmented, pad=4)
    assert len(matches) == 1
    flipped.append(matches[0] >= 81)
  assert 16 < sum(flipped) < 48


# Process invariance.

@pytest.mark.parametrize('augmentation', [None, (4, True)])
def test_two_processes_concatenate_to_one(augmentation):
  data_ = _indexed(37)
  kwargs = dict(global_batch_size=12, seed=11, start_step=2, augmentation=augmentation)
  one = _take(pipeline.train_batches(data_, process_index=0, process_count=1,
                                     **kwargs), 5)
  parts = [_take(pipeline.train_batches(data_, process_index=i, process_count=2,
                                        **kwargs), 5) for i in range(2)]
  for whole, first, second in zip(one, *parts):
    assert first['image'].shape == (6, 6, 6, 3)
    for k in whole:
      np.testing.assert_array_equal(whole[k], np.concatenate([first[k], second[k]]))


def test_eval_each_example_once_across_processes():
  n = 10
  parts = [list(pipeline.eval_batches(_indexed(n), global_batch_size=4,
                                      process_index=i, process_count=2))
           for i in range(2)]
  assert [len(p) for p in parts] == [3, 3]
  seen = []
  for batch in (b for p in parts for b in p):
    assert batch['image'].shape == (2, 6, 6, 3) and batch['mask'].dtype == bool
    seen += list(batch['index'][batch['mask']])
    assert not batch['image'][~batch['mask']].any()
    assert not batch['label'][~batch['mask']].any()
  assert sorted(seen) == list(range(n))
  np.testing.assert_array_equal(parts[1][2]['mask'], [False, False])


def test_whole_batches_on_every_process(data_dir, monkeypatch):
  """Process 1 of 2 reading whole batches (populations) gets the one-process batches;
  a streamed dataset, read in per-process shards, cannot be read so."""
  kwargs = dict(data_dir=data_dir, global_batch_size=64)
  one_train = _take(data.train_iterator(DIGITS, seed=2, **kwargs), 2)
  one_eval = list(data.eval_iterator(DIGITS, **kwargs))
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  monkeypatch.setattr(jax, 'process_index', lambda: 1)
  half = _take(data.train_iterator(DIGITS, seed=2, **kwargs), 1)[0]
  assert half['label'].shape == (32,)
  np.testing.assert_array_equal(half['label'], one_train[0]['label'][32:])
  _assert_batches_equal(
      _take(data.train_iterator(DIGITS, seed=2, whole_batches=True, **kwargs), 2), one_train)
  _assert_batches_equal(list(data.eval_iterator(DIGITS, whole_batches=True, **kwargs)),
                        one_eval)
  with pytest.raises(ValueError, match='imagenet2012 is streamed in per-process shards'):
    data.train_iterator(data.dataset_spec('imagenet2012'), seed=0, whole_batches=True,
                        **kwargs)


def test_batch_not_divisible_by_processes():
  with pytest.raises(ValueError, match='multiple of the number of processes, 3'):
    global_batches.local_batch_size(10, 3)


def test_digits_eval_iterator_pads_and_masks(data_dir):
  batches = list(data.eval_iterator(DIGITS, data_dir=data_dir, global_batch_size=128))
  assert len(batches) == 5
  assert [b['mask'].sum() for b in batches] == [128, 128, 128, 128, 28]
  test = sources.load_split(DIGITS, data_dir, 'test')
  masked = [(b['image'][b['mask']], b['label'][b['mask']]) for b in batches]
  assert (_rows(np.concatenate([m[0] for m in masked]), np.concatenate([m[1] for m in masked]))
          == _rows(test['image'], test['label']))


def test_prefetch_keeps_order_and_raises_producer_errors():
  def produce():
    yield from range(5)
    raise RuntimeError('broken input')

  items = pipeline.prefetch(produce())
  assert [next(items) for _ in range(5)] == list(range(5))
  with pytest.raises(RuntimeError, match='broken input'):
    next(items)


# Missing and malformed data.

def test_missing_imagenet_names_the_manual_files(tmp_path):
  with pytest.raises(data.DatasetNotFoundError, match='ILSVRC2012_img_train.tar') as e:
    next(data.eval_iterator(data.dataset_spec('imagenet2012'), data_dir=str(tmp_path),
                            global_batch_size=8))
  assert str(tmp_path / 'downloads' / 'manual') in str(e.value)


def test_missing_tiny_imagenet_zip(tmp_path):
  with pytest.raises(data.DatasetNotFoundError) as e:
    data.num_examples(data.dataset_spec('tiny_imagenet'), str(tmp_path), 'train')
  assert str(tmp_path / 'downloads' / 'manual' / 'tiny-imagenet-200.zip') in str(e.value)


def _jpeg(value, channels=3):
  image = np.full((64, 64, channels), value, np.uint8)
  image[::2] = 255 - value  # Some structure, so decoding is checked.
  return tf.io.encode_jpeg(image).numpy()


def _fake_tiny_imagenet(data_dir, skip=()):
  """A miniature tiny-imagenet-200.zip: 3 classes x 4 train images, 2 val images."""
  manual = pathlib.Path(data_dir) / 'downloads' / 'manual'
  manual.mkdir(parents=True)
  wnids = ['n03', 'n01', 'n02']  # Labels follow the sorted order: n01, n02, n03.
  members = {'tiny-imagenet-200/wnids.txt': '\n'.join(wnids) + '\n',
             'tiny-imagenet-200/val/val_annotations.txt':
                 'val_0.JPEG\tn03\t0\t0\t63\t63\nval_1.JPEG\tn01\t1\t2\t40\t50\n',
             'tiny-imagenet-200/val/images/val_0.JPEG': _jpeg(20),
             'tiny-imagenet-200/val/images/val_1.JPEG': _jpeg(40, channels=1),
             'tiny-imagenet-200/words.txt': 'n01\tthing\n'}
  for c, wnid in enumerate(wnids):
    for i in range(4):
      members[f'tiny-imagenet-200/train/{wnid}/images/{wnid}_{i}.JPEG'] = _jpeg(
          10 * c + i, channels=1 if i == 0 else 3)
    members[f'tiny-imagenet-200/train/{wnid}/{wnid}_boxes.txt'] = ''
  with zipfile.ZipFile(manual / 'tiny-imagenet-200.zip', 'w') as zf:
    for name, content in members.items():
      if name not in skip:
        zf.writestr(name, content)
  return members


def test_tiny_imagenet_from_fake_zip(tmp_path):
  members = _fake_tiny_imagenet(tmp_path)
  spec = data.dataset_spec('tiny_imagenet')
  assert data.num_examples(spec, str(tmp_path), 'train') == 12
  assert data.num_examples(spec, str(tmp_path), 'validation') == 2
  train = sources.load_split(spec, str(tmp_path), 'train')
  assert train['image'].shape == (12, 64, 64, 3)
  assert sorted(train['label']) == [0] * 4 + [1] * 4 + [2] * 4
  val = sources.load_split(spec, str(tmp_path), 'validation')
  decoded = {name: tf.io.decode_jpeg(members[f'tiny-imagenet-200/val/images/{name}'],
                                     channels=3).numpy() for name in ('val_0.JPEG', 'val_1.JPEG')}
  # val_0 is n03 (label 2); val_1 is grayscale n01 (label 0), now with 3 equal channels.
  for image, label in zip(val['image'], val['label']):
    expected = decoded['val_0.JPEG'] if label == 2 else decoded['val_1.JPEG']
    np.testing.assert_array_equal(image, expected)
  assert sorted(val['label']) == [0, 2]
  batch = next(data.train_iterator(spec, data_dir=str(tmp_path), global_batch_size=4,
                                   seed=0))
  assert batch['image'].shape == (4, 64, 64, 3) and batch['image'].dtype == np.uint8
  evals = list(data.eval_iterator(spec, data_dir=str(tmp_path), global_batch_size=4))
  assert len(evals) == 1 and evals[0]['mask'].tolist() == [True, True, False, False]


@pytest.mark.parametrize('skip,match', [
    ('tiny-imagenet-200/wnids.txt', 'has no tiny-imagenet-200/wnids.txt'),
    ('tiny-imagenet-200/val/val_annotations.txt', 'has no .*val_annotations.txt'),
])
def test_tiny_imagenet_zip_missing_index_file(tmp_path, skip, match):
  _fake_tiny_imagenet(tmp_path, skip=(skip,))
  with pytest.raises(ValueError, match=match):
    data.num_examples(data.dataset_spec('tiny_imagenet'), str(tmp_path), 'train')


def test_tiny_imagenet_not_a_zip(tmp_path):
  manual = tmp_path / 'downloads' / 'manual'
  manual.mkdir(parents=True)
  (manual / 'tiny-imagenet-200.zip').write_text('<html>Not found</html>')
  with pytest.raises(ValueError, match='is not a zip file'):
    data.num_examples(data.dataset_spec('tiny_imagenet'), str(tmp_path), 'train')


def test_out_of_range_labels():
  spec = data.dataset_spec('cifar100')

  def as_dataset(self, *args, **kwargs):
    del self, args, kwargs
    return tf.data.Dataset.from_tensor_slices({
        'image': np.zeros((3, 32, 32, 3), np.uint8), 'label': np.array([5, 100, 7]),
        'coarse_label': np.array([1, 2, 3]), 'id': np.array([b'a', b'b', b'c'])})

  with tfds.testing.mock_data(as_dataset_fn=as_dataset):
    with pytest.raises(ValueError, match=r"'cifar100' has label 100, outside \[0, 100\)"):
      data.train_iterator(spec, data_dir=None, global_batch_size=2, seed=0)
  with pytest.raises(ValueError, match='coarse_label -1'):
    sources.check_labels({'label': np.array([1]), 'coarse_label': np.array([-1])}, spec)


# TFDS datasets under mock data.

def test_mock_cifar100_end_to_end():
  spec = data.dataset_spec('cifar100')
  with tfds.testing.mock_data(num_examples=20):
    train = data.train_iterator(spec, data_dir=None, global_batch_size=8, seed=0)
    batches = _take(train, 4)  # 32 positions: more than one epoch of 20.
    evals = list(data.eval_iterator(spec, data_dir=None, global_batch_size=8))
  for b in batches:
    assert b['image'].shape == (8, 32, 32, 3) and b['image'].dtype == np.uint8
    assert b['label'].dtype == np.int32 and b['coarse_label'].dtype == np.int32
    assert b['coarse_label'].max() < 20 and b['label'].max() < 100
  assert [b['mask'].sum() for b in evals] == [8, 8, 4]
  assert set(evals[0]) == {'image', 'label', 'coarse_label', 'mask'}


def test_mock_imagenet_train_and_eval():
  spec = data.dataset_spec('imagenet2012')
  with tfds.testing.mock_data(num_examples=12):
    def train(**kwargs):
      return _take(data.train_iterator(spec, data_dir=None, global_batch_size=4, seed=0,
                                       **kwargs), 2)
    first = train()
    again = train()
    resumed = train(start_step=1)
    evals = list(data.eval_iterator(spec, data_dir=None, global_batch_size=5))
  assert first[0]['image'].shape == (4, 224, 224, 3) and first[0]['image'].dtype == np.uint8
  assert first[0]['label'].dtype == np.int32
  _assert_batches_equal(first, again)
  _assert_batches_equal(first[1:], resumed[:1])
  assert [b['image'].shape for b in evals] == [(5, 224, 224, 3)] * 3
  assert [b['mask'].sum() for b in evals] == [5, 5, 2]


def test_imagenet_eval_resize_and_center_crop():
  from oracle_jax.data import transforms  # pylint: disable=g-import-not-at-top
  # Shorter side already 256: no resize, so the crop must be the exact centre.
  image = np.random.default_rng(0).integers(0, 256, (300, 256, 3), dtype=np.uint8)
  out = transforms.resize_and_center_crop(tf.constant(image), (224, 224)).numpy()
  np.testing.assert_array_equal(out, image[38:262, 16:240])
  small = transforms.resize_and_center_crop(tf.zeros((40, 60, 3), tf.uint8), (224, 224))
  assert small.shape == (224, 224, 3)


def test_imagenet_crop_windows_follow_torchvision_ranges():
  from oracle_jax.data import transforms  # pylint: disable=g-import-not-at-top
  windows = np.array([transforms.crop_window(tf.constant([375, 500]),
                                           tf.constant([s, 0], tf.int64)).numpy()
                      for s in range(200)])
  top, left, h, w = windows.T
  assert np.all((top >= 0) & (left >= 0) & (top + h <= 375) & (left + w <= 500))
  area = h * w / (375 * 500)
  assert np.all(area >= 0.079) and np.all(area <= 1) and area.min() < 0.2
  assert np.all((w / h > 0.74) & (w / h < 1.35))
  # A very wide image falls back to the largest central crop of ratio 4/3.
  np.testing.assert_array_equal(
      transforms.crop_window(tf.constant([10, 1000]), tf.constant([0, 0], tf.int64)),
      [0, 494, 10, 13])
