"""CIFAR downloads and prepares itself on first use; offline that fails fast, in one line.

No test touches the network: TFDS's download is replaced by a tiny archive in the real
CIFAR binary format, made here, and the offline path runs behind an unreachable proxy.
"""
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import threading
import time

import numpy as np
import pytest
import requests

from oracle_jax import data
from oracle_jax import errors
from oracle_jax.data import sources

tf = sources.import_tensorflow()
import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top,wrong-import-position
from tensorflow_datasets.core.download import checksums  # pylint: disable=g-import-not-at-top,wrong-import-position

REPO = pathlib.Path(__file__).parent.parent
UNREACHABLE_PROXY = 'http://127.0.0.1:9'  # the discard port: nothing listens there
URLS = {'cifar10': 'https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz',
        'cifar100': 'https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz'}
# The layout of the real archives: folder, files per split, label files (one per label,
# in the order of the label bytes of each record) and their class counts.
LAYOUT = {
    'cifar10': dict(folder='cifar-10-batches-bin',
                    files={'train': [f'data_batch_{i}.bin' for i in range(1, 6)],
                           'test': ['test_batch.bin']},
                    labels={'label': ('batches.meta.txt', 10)}),
    'cifar100': dict(folder='cifar-100-binary',
                     files={'train': ['train.bin'], 'test': ['test.bin']},
                     labels={'coarse_label': ('coarse_label_names.txt', 20),
                             'label': ('fine_label_names.txt', 100)}),
}


def _fake_cifar(name, root, per_file=3):
  """A tiny `name` archive in the CIFAR binary format, at `root/<its real file name>`.

  Returns (archive path, {split: {id: (labels dict, image HWC uint8)}}), the ids being
  the ones TFDS gives ('train_00004': the fifth record of the split's files, in order).
  """
  layout, rng = LAYOUT[name], np.random.default_rng(len(name))
  folder = root / layout['folder']
  folder.mkdir(parents=True)
  for key, (file_name, n) in layout['labels'].items():
    (folder / file_name).write_text(''.join(f'{key}_{i}\n' for i in range(n)))
  expected = {}
  for split, file_names in layout['files'].items():
    examples = expected[split] = {}
    for file_name in file_names:
      records = []
      for _ in range(per_file):
        labels = {key: int(rng.integers(n)) for key, (_, n) in layout['labels'].items()}
        image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        examples[f'{split}_{len(examples):05d}'] = (labels, image)
        # A record: its label bytes, then the red, green and blue 32x32 planes.
        records.append(bytes(labels.values()) + image.transpose(2, 0, 1).tobytes())
      (folder / file_name).write_bytes(b''.join(records))
  archive = root / pathlib.PurePosixPath(URLS[name]).name
  with tarfile.open(archive, 'w:gz') as tar:
    tar.add(folder, arcname=layout['folder'])
  return archive, expected


def _read_all(b, split, keys):
  ds = sources.as_dataset(b, split)
  return {ex['id'].decode(): ({k: int(ex[k]) for k in keys}, ex['image'])
          for ex in tfds.as_numpy(ds)}


def _assert_prepared_with(name, b, expected):
  assert b.is_prepared()
  keys = list(LAYOUT[name]['labels'])
  for split, examples in expected.items():
    got = _read_all(b, split, keys)
    assert sorted(got) == sorted(examples)
    for example_id, (labels, image) in examples.items():
      assert got[example_id][0] == labels, example_id
      np.testing.assert_array_equal(got[example_id][1], image, err_msg=example_id)


class _Response:
  status_code = 200


@pytest.fixture
def fake_download(tmp_path, monkeypatch):
  """TFDS's download of CIFAR replaced by the fake archive (extracted), and a network
  that answers: returns (the URLs TFDS fetched, the URLs checked, the expected data)."""
  fetched, checked, expected = [], [], {}

  def download_and_extract(self, url):
    del self
    fetched.append(url)
    name = next(n for n, u in URLS.items() if u == url)
    archive, expected[name] = _fake_cifar(name, tmp_path / f'fake_{len(fetched)}')
    time.sleep(0.5)  # a download takes a while: others on this machine wait meanwhile
    out = tmp_path / f'extracted_{len(fetched)}'
    with tarfile.open(archive) as tar:
      tar.extractall(out, filter='data')
    return out

  def head(url, **kwargs):
    checked.append((url, kwargs.get('timeout')))
    return _Response()

  monkeypatch.setattr(tfds.download.DownloadManager, 'download_and_extract',
                      download_and_extract)
  monkeypatch.setattr(requests, 'head', head)
  return fetched, checked, expected


def _offline(monkeypatch):
  """Every request of this process goes to a proxy that refuses connections."""
  for var in ('NO_PROXY', 'no_proxy'):
    monkeypatch.delenv(var, raising=False)
  for var in ('HTTPS_PROXY', 'https_proxy', 'HTTP_PROXY', 'http_proxy', 'ALL_PROXY',
              'all_proxy'):
    monkeypatch.setenv(var, UNREACHABLE_PROXY)


@pytest.mark.parametrize('name', ['cifar10', 'cifar100'])
def test_cifar_downloads_and_prepares_itself_on_first_use(name, fake_download, tmp_path,
                                                          monkeypatch):
  fetched, checked, expected = fake_download
  spec, data_dir = data.dataset_spec(name), str(tmp_path / 'tfds')
  b = sources.builder(spec, data_dir)
  assert fetched == [URLS[name]]
  assert checked == [(URLS[name], sources._NETWORK_TIMEOUT_S)]  # pylint: disable=protected-access
  assert b.data_dir == str(tmp_path / 'tfds' / name / '3.0.2')
  _assert_prepared_with(name, b, expected[name])
  train = sources.load_split(spec, data_dir, 'train')  # what training reads
  assert len(train['label']) == len(expected[name]['train']) == sources.split_size(b, 'train')
  # Prepared once: later uses, offline ones included, neither download nor check.
  _offline(monkeypatch)
  _assert_prepared_with(name, sources.builder(spec, data_dir), expected[name])
  assert len(fetched) == len(checked) == 1


def test_processes_of_one_machine_download_once(fake_download, tmp_path):
  """Two concurrent users of one data_dir: one downloads, the other waits and uses it."""
  fetched, _, expected = fake_download
  spec, data_dir = data.dataset_spec('cifar10'), str(tmp_path / 'tfds')
  builders = [None, None]

  def use(i):
    builders[i] = sources.builder(spec, data_dir)

  threads = [threading.Thread(target=use, args=(i,)) for i in range(2)]
  for t in threads:
    t.start()
  for t in threads:
    t.join(timeout=120)
  assert fetched == [URLS['cifar10']]
  for b in builders:
    _assert_prepared_with('cifar10', b, expected['cifar10'])


def test_an_archive_in_the_manual_folder_is_prepared_offline(tmp_path, monkeypatch):
  """TFDS's own download manager takes a CIFAR archive put in downloads/manual: no
  network needed (the fake's checksum is registered in place of the real one)."""
  archive, expected = _fake_cifar('cifar10', tmp_path / 'fake')
  data_dir = tmp_path / 'tfds'
  (data_dir / 'downloads' / 'manual').mkdir(parents=True)
  shutil.copy(archive, data_dir / 'downloads' / 'manual' / archive.name)
  builder_class = type(tfds.builder('cifar10', data_dir=str(data_dir)))
  monkeypatch.setattr(builder_class, 'url_infos',
                      {URLS['cifar10']: checksums.compute_url_info(archive)})
  _offline(monkeypatch)
  b = sources.builder(data.dataset_spec('cifar10'), str(data_dir))
  _assert_prepared_with('cifar10', b, expected)


@pytest.mark.parametrize('name', ['cifar10', 'cifar100'])
def test_offline_fails_in_seconds_in_one_line(name, tmp_path, monkeypatch):
  _offline(monkeypatch)
  data_dir = tmp_path / 'tfds'
  start = time.monotonic()
  with pytest.raises(data.DatasetNotFoundError) as e:
    sources.builder(data.dataset_spec(name), str(data_dir))
  took = time.monotonic() - start
  assert took < 30, took  # TFDS's own retries take 3.4 minutes
  message = str(e.value)
  assert isinstance(e.value, errors.UserError) and '\n' not in message
  assert isinstance(e.value, FileNotFoundError)  # what a missing dataset always was
  assert message.startswith(f"Dataset '{name}' is not prepared: TFDS looked in data_dir "
                            f'{data_dir} (for {data_dir / name / "3.0.2"}).')
  assert (f'Prepare it on a machine with internet access: python -c "import '
          f"tensorflow_datasets as tfds; tfds.builder('{name}', data_dir='{data_dir}')"
          f'.download_and_prepare()" then copy the folder {data_dir / name} there to the '
          f'same place here.') in message
  assert (f'Or put {pathlib.PurePosixPath(URLS[name]).name} (from {URLS[name]}) in '
          f'{data_dir / "downloads" / "manual"}') in message
  assert message.endswith('(Download failed: ProxyError ([Errno 111] Connection refused).)')
  assert not (data_dir / name / '3.0.2').exists()  # nothing half-prepared is left


def test_offline_run_is_one_line_at_the_command_line(tmp_path):
  """`launch/main.py` on CIFAR without network: exit 1, one line on stderr, no traceback."""
  env = {k: v for k, v in os.environ.items() if k.lower() != 'no_proxy'}
  env.update({var: UNREACHABLE_PROXY for var in ('HTTPS_PROXY', 'https_proxy', 'HTTP_PROXY',
                                                  'http_proxy', 'ALL_PROXY', 'all_proxy')})
  data_dir = tmp_path / 'tfds'
  proc = subprocess.run(
      [sys.executable, str(REPO / 'launch' / 'main.py'), '--config=configs/cifar10_r56_r20.py',
       '--config.method=scratch', f'--config.data_dir={data_dir}',
       f'--workdir={tmp_path / "run"}', '--dry_run'],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 1, proc.stderr[-3000:]
  (line,) = proc.stderr.strip().splitlines()
  assert line.startswith(f"error: Dataset 'cifar10' is not prepared: TFDS looked in data_dir "
                         f'{data_dir} ')
  assert 'download_and_prepare()' in line and line.endswith('Connection refused).)')


def test_imagenet_is_never_downloaded(tmp_path, monkeypatch):
  """Datasets with manual downloads stay manual: builder() only returns their builder."""
  monkeypatch.setattr(tfds.core.DatasetBuilder, 'download_and_prepare',
                      lambda *a, **k: pytest.fail('ImageNet must not be downloaded'))
  b = sources.builder(data.dataset_spec('imagenet2012'), str(tmp_path))
  assert b.name == 'imagenet2012' and not b.is_prepared()
