"""Folder datasets (`dataset='folder:DIR'`): layout checks, statistics, cache, resizing,
the in-memory and streamed pipelines, and every command on a small folder of images."""
import json

import jax
import numpy as np
from PIL import Image
import pytest

from configs import common
from oracle_jax import data, errors, train
from oracle_jax.analysis import report
from oracle_jax.data import folder, pipeline, sources, streamed, transforms

from image_folders import CLASSES, make_folder, save_image  # pylint: disable=g-bad-import-order


def config_for(root, cache_dir, **overrides):
  c = common.base_config()
  c.dataset, c.data_dir = f'folder:{root}', str(cache_dir)
  for key, value in overrides.items():
    c[key] = value
  return c


def _by_content(images, labels):
  return sorted(im.tobytes() + bytes([int(l)]) for im, l in zip(images, labels))


@pytest.fixture(scope='module')
def small(tmp_path_factory):
  """A 3-class folder of 8x8 PNGs, its known pixels, and a cache directory."""
  root = tmp_path_factory.mktemp('images')
  return root, make_folder(root), tmp_path_factory.mktemp('cache')


def test_spec_names_classes_sizes_and_exact_statistics(small):
  root, pixels, cache = small
  spec = data.spec_for(config_for(root, cache))
  assert (spec.num_classes, spec.class_names, spec.image_shape) == (3, CLASSES, (8, 8, 3))
  assert (spec.eval_split, spec.augment, spec.streamed) == ('test', 'crop_flip', False)
  x = pixels['train'][0].astype(np.float64) / 255  # greyscale repeated, alpha dropped
  np.testing.assert_allclose(spec.mean, x.mean((0, 1, 2)), rtol=0, atol=1e-12)
  np.testing.assert_allclose(spec.std, x.std((0, 1, 2)), rtol=0, atol=1e-12)
  record = json.loads(next((cache / 'folder_datasets').iterdir()).read_text())
  assert record['sizes'] == {'test': [[8, 8]], 'train': [[8, 8]]}
  assert record['mean'] == list(spec.mean)


def test_splits_load_every_image_as_rgb_with_its_label(small):
  root, pixels, cache = small
  spec = data.spec_for(config_for(root, cache))
  for split in ('train', 'test'):
    loaded = pipeline.load_split(spec, None, split)
    assert loaded['image'].dtype == np.uint8 and loaded['label'].dtype == np.int32
    assert _by_content(loaded['image'], loaded['label']) == _by_content(*pixels[split])


def test_given_statistics_skip_the_statistics_pass(small, tmp_path, monkeypatch):
  root, _, _ = small
  monkeypatch.setattr(folder, 'statistics', lambda layout: pytest.fail('computed'))
  spec = data.spec_for(config_for(root, tmp_path, data_mean=(0.5, 0.4, 0.3),
                                  data_std=(0.2, 0.2, 0.25)))
  assert (spec.mean, spec.std) == ((0.5, 0.4, 0.3), (0.2, 0.2, 0.25))


def test_scan_is_cached_by_file_list(tmp_path, monkeypatch):
  root = tmp_path / 'images'
  make_folder(root, per_class=(2, 1))
  config = config_for(root, tmp_path / 'cache')
  first = folder.scanned(folder.read_layout(config.dataset), config.data_dir, need_stats=True)
  calls = []
  monkeypatch.setattr(folder, 'statistics', lambda layout: calls.append(1) or first)
  monkeypatch.setattr(folder, 'check_headers', lambda layout, split: calls.append(1) or [])
  assert folder.scanned(folder.read_layout(config.dataset), config.data_dir,
                        need_stats=True) == first and not calls
  save_image(f'{root}/train/cat/new.png', np.zeros((8, 8, 3), np.uint8))
  folder.read_layout.cache_clear()  # a new process would walk the folder afresh
  sources.image_folder.cache_clear()
  folder.scanned(folder.read_layout(config.dataset), config.data_dir, need_stats=True)
  assert calls  # another file list: scanned again


def test_images_of_other_sizes_need_image_size_and_are_resized(tmp_path):
  root = tmp_path / 'images'
  make_folder(root, per_class=(2, 1))
  odd = np.random.default_rng(1).integers(0, 256, (12, 10, 3), dtype=np.uint8)
  save_image(f'{root}/train/dog/odd.jpg', odd, 'JPEG')
  with pytest.raises(errors.DataError, match=r"have 2 sizes \(8x8, 12x10.*image_size='\(H,W\)'"):
    data.spec_for(config_for(root, tmp_path / 'cache'))
  spec = data.spec_for(config_for(root, tmp_path / 'cache', image_size=(8, 8)))
  loaded = pipeline.load_split(spec, None, 'train')
  assert loaded['image'].shape == (7, 8, 8, 3)
  decoded = transforms.decode(open(f'{root}/train/dog/odd.jpg', 'rb').read())
  expected = transforms.resize_uint8(decoded, (8, 8)).numpy()
  assert any(np.array_equal(im, expected) for im in loaded['image'])


def _bad_folder(tmp_path, case):
  root = tmp_path / 'images'
  if case == 'missing':
    return root, str(root)
  if case == 'no train':
    make_folder(root, splits=('test',), per_class=(1,))
    return root, 'no train/ folder'
  if case == 'no eval split':
    make_folder(root, splits=('train',), per_class=(1,))
    return root, 'no evaluation split'
  if case == 'one class':
    make_folder(root, per_class=(1, 1), classes=('cat',))
    return root, 'at least 2'
  make_folder(root, per_class=(2, 1))
  if case == 'class missing from a split':
    save_image(f'{root}/train/fox/0.png', np.zeros((8, 8, 3), np.uint8))
    return root, r"Class 'fox' has no images in .*/test/"
  if case == 'empty split':
    for name in CLASSES:
      for f in (root / 'test' / name).iterdir():
        f.unlink()
    return root, r'/test/ holds no images'
  if case == 'corrupt image':
    (root / 'train' / 'dog' / 'broken.jpg').write_bytes(b'not an image at all')
    return root, r'Cannot read image .*train/dog/broken\.jpg'
  raise ValueError(case)


@pytest.mark.parametrize('case', ['missing', 'no train', 'no eval split', 'one class',
                                  'class missing from a split', 'empty split',
                                  'corrupt image'])
def test_bad_folders_fail_in_one_line_and_write_nothing(tmp_path, case):
  root, message = _bad_folder(tmp_path, case)
  workdir = tmp_path / 'run'
  with pytest.raises(errors.DataError, match=message) as e:
    train.train_and_evaluate(config_for(root, tmp_path / 'cache', method='scratch'),
                             str(workdir))
  assert '\n' not in str(e.value) and not workdir.exists()


def test_truncated_image_is_named_by_the_statistics_pass(tmp_path):
  root = tmp_path / 'images'
  make_folder(root, per_class=(2, 1))
  buffer = tmp_path / 'whole.jpg'
  save_image(str(buffer), np.random.default_rng(0).integers(0, 256, (8, 8, 3), np.uint8), 'JPEG')
  (root / 'train' / 'emu' / 'cut.jpg').write_bytes(buffer.read_bytes()[:-60])
  with pytest.raises(errors.DataError, match=r'Cannot (decode|read) image .*emu/cut\.jpg'):
    data.spec_for(config_for(root, tmp_path / 'cache'))


def test_eval_split_is_the_first_present_or_the_chosen_one(tmp_path):
  root = tmp_path / 'images'
  make_folder(root, per_class=(2, 1, 1), splits=('train', 'validation', 'val'))
  config = config_for(root, tmp_path / 'cache')
  assert data.spec_for(config).eval_split == 'val'
  config.eval_split = 'validation'
  assert data.spec_for(config).eval_split == 'validation'
  config.eval_split = 'test'
  with pytest.raises(errors.DataError, match=r"eval_split 'test'.*train, val, validation"):
    data.spec_for(config)


def test_large_images_default_to_random_resized_crop_streamed(tmp_path):
  root = tmp_path / 'images'
  make_folder(root, per_class=(2, 1), size=(72, 80))
  spec = data.spec_for(config_for(root, tmp_path / 'cache'))
  assert (spec.image_shape, spec.augment, spec.streamed) == ((72, 80, 3), 'random_resized_crop', True)
  batch = next(data.train_iterator(spec, data_dir=None, global_batch_size=4, seed=0))
  assert batch['image'].shape == (4, 72, 80, 3)
  evals = list(data.eval_iterator(spec, data_dir=None, global_batch_size=2))
  assert [int(b['mask'].sum()) for b in evals] == [2, 1]


def test_streamed_crop_flip_is_deterministic_resumable_and_sharded(small, monkeypatch):
  root, pixels, cache = small
  spec = data.spec_for(config_for(root, cache, in_memory_gb=0.0))
  assert spec.streamed and spec.augment == 'crop_flip'
  stream = lambda start: data.train_iterator(spec, data_dir=None, global_batch_size=6, seed=3,
                                             start_step=start)
  first, again, resumed = stream(0), stream(0), stream(2)
  batches = [next(first) for _ in range(3)]
  for a, b in zip(batches, [next(again) for _ in range(3)]):
    np.testing.assert_array_equal(a['image'], b['image'])
  np.testing.assert_array_equal(next(resumed)['image'], batches[2]['image'])
  # An epoch (18 images, 3 batches) holds every label as often as the folder does.
  assert sorted(np.concatenate([b['label'] for b in batches])) == sorted(pixels['train'][1])
  # Two processes read disjoint halves of the test split.
  seen = []
  for index in (0, 1):
    monkeypatch.setattr(jax, 'process_index', lambda index=index: index)
    monkeypatch.setattr(jax, 'process_count', lambda: 2)
    for b in streamed.eval_iterator(spec, data_dir=None, global_batch_size=4, split='test'):
      seen += [im.tobytes() for im in b['image'][b['mask']]]
  assert sorted(seen) == sorted(im.tobytes() for im in pixels['test'][0])


def test_tsne_legend_names_the_classes(monkeypatch, tmp_path):
  figures = []
  monkeypatch.setattr(report, '_save_figure', lambda fig, path: figures.append(fig))
  xy = np.random.default_rng(0).normal(size=(6, 2))
  report.plot_tsne(tmp_path / 't.png', {0.0: xy}, np.array([0, 1, 2, 0, 1, 2]), 'class',
                   CLASSES)
  legend = figures[0].axes[0].get_legend()
  assert [t.get_text() for t in legend.get_texts()] == list(CLASSES)


@pytest.fixture(scope='module')
def folder_teacher(small, tmp_path_factory):
  root, _, cache = small
  workdir = tmp_path_factory.mktemp('folder_teacher')
  config = config_for(root, cache, method='scratch', train_steps=4, batch_size=8,
                      eval_batch_size=8, log_every_steps=2, checkpoint_every_steps=2)
  config.student.model = 'resnet8'
  return str(workdir), train.train_and_evaluate(config, str(workdir))


def test_scratch_run_records_classes_and_statistics(folder_teacher, small):
  _, results = folder_teacher
  spec = data.spec_for(config_for(small[0], small[2]))
  assert results['class_names'] == list(CLASSES) and results['image_size'] == [8, 8]
  assert results['data_mean'] == list(spec.mean) and results['steps'] == 4
  assert 0 <= results['final_top1'] <= 1


def kd_config(root, cache, teacher):
  """Two steps of oracle KD of a resnet8 by the folder's resnet8 teacher."""
  config = config_for(root, cache, method='kd', train_steps=2, batch_size=8,
                      eval_batch_size=8, log_every_steps=1, checkpoint_every_steps=2)
  config.student.model = config.teacher.model = 'resnet8'
  config.teacher.checkpoint = teacher
  return config


def test_oracle_kd_and_export_on_a_folder(folder_teacher, small, tmp_path):
  root, _, cache = small
  config = kd_config(root, cache, folder_teacher[0])
  results = train.train_and_evaluate(config, str(tmp_path / 'kd'))
  assert results['oracle'] and results['class_names'] == list(CLASSES)
  assert results['teacher_top1'] == pytest.approx(folder_teacher[1]['final_top1'])
  from oracle_jax.interop import export  # pylint: disable=g-import-not-at-top
  info = export.export(export.from_workdir(tmp_path / 'kd'), str(tmp_path / 's.safetensors'))
  assert info['class_names'] == list(CLASSES) and info['num_classes'] == 3
  assert info['mean'] == results['data_mean'] and info['input_size'] == [3, 8, 8]


def test_sweep_population_and_analysis_name_the_classes(folder_teacher, small, tmp_path):
  from oracle_jax import sweep  # pylint: disable=g-import-not-at-top
  from oracle_jax.analysis import command  # pylint: disable=g-import-not-at-top
  root, _, cache = small
  config = kd_config(root, cache, folder_teacher[0])
  groups = sweep.plan(config, ['kd', 'oracle_kd'], [0])['groups']
  assert [g['runs'] for g in groups] == [['kd_seed0', 'oracle_kd_seed0']]  # one population
  results = sweep.run_grid(config, tmp_path / 'sweep', ['kd', 'oracle_kd'], [0])
  assert [r[0]['class_names'] for r in results.values()] == [list(CLASSES)] * 2
  assert sweep.caption(results) == f'Dataset folder:{root}, 3 classes: cat, dog, emu.'
  out = command.run(config, teacher=folder_teacher[0], out_dir=str(tmp_path / 'analysis'),
                    gammas=(0, 1), tsne_examples=4, silhouette_examples=4)
  assert [r['gamma'] for r in out['results']] == [0.0, 1.0]
  assert out['scratch']['num_examples'] == 6
  assert '* classes: cat, dog, emu' in (tmp_path / 'analysis' / 'report.md').read_text()


@pytest.mark.parametrize('mode', ['RGB', 'L'])
def test_jpeg_pixels_are_torchvisions(tmp_path, mode):
  """JPEGs decode to exactly PIL's `Image.open(f).convert('RGB')` (torchvision's loader),
  greyscale ones too: TensorFlow's default IDCT would be up to 5 levels off."""
  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 256, (32, 32, 3) if mode == 'RGB' else (32, 32), dtype=np.uint8)
  path = tmp_path / 'x.jpg'
  Image.fromarray(pixels).save(path, quality=75)
  expected = np.asarray(Image.open(path).convert('RGB'))
  np.testing.assert_array_equal(transforms.decode(path.read_bytes()).numpy(), expected)
