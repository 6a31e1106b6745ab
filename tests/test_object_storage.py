"""End to end on object storage, offline: gs:// served by an in-memory GCS emulator.

epath (through fsspec/gcsfs) and orbax (through TensorStore's GCS driver) both reach the
emulator; TensorFlow's own GCS client cannot be redirected, so TensorBoard summaries are
off (`config.tensorboard=False`) and the TFDS data stay local. A teacher is trained into
the bucket, a student distils from it there and resumes, the teacher is analysed and a
sweep runs, all with gs:// paths; the local disk sees nothing outside the test's
temporary directory.
"""
import json
import os
import socket
import subprocess
import sys
import textwrap

from gcp_storage_emulator import server as emulator
import pytest

from helpers import REPO

SCRIPT = textwrap.dedent('''
    import json, sys
    sys.path.insert(0, {repo!r})
    from helpers import digits_config
    from oracle_jax import analysis, fileio, sweep, train

    def config(**overrides):
      return digits_config({data_dir!r}, tensorboard=False, train_steps=4, **overrides)

    teacher = train.train_and_evaluate(config(method='scratch'), 'gs://bucket/teacher_run')
    student = config(method='kd', **{{'teacher.model': 'resnet8',
                                      'teacher.checkpoint': 'gs://bucket/teacher_run/teacher'}})
    first = train.train_and_evaluate(student, 'gs://bucket/student')
    again = train.train_and_evaluate(student, 'gs://bucket/student')  # restores step 4
    report = analysis.run(student, teacher='gs://bucket/teacher_run/teacher',
                          out_dir='gs://bucket/analysis', gammas=[0, 1],
                          tsne_examples=20, silhouette_examples=20, max_examples=64)
    rows = sweep.summarize(sweep.run_grid(student, 'gs://bucket/sweep', ['kd'], [0]), 'kd')
    fileio.write_text('gs://bucket/sweep/sweep.md', sweep.markdown(rows, 'kd'))
    print('RESULT', json.dumps(dict(first=first, again=again, rows=rows,
                                    gammas=[r['gamma'] for r in report['results']])))
''')


def _free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _with_generation_header(download):
  """Real GCS sends `x-goog-generation` with every download and TensorStore reads it;
  the emulator leaves it out, so the test adds it."""
  def handler(request, response, storage, *args, **kwargs):
    download(request, response, storage, *args, **kwargs)
    try:
      obj = storage.get_file_obj(request.params['bucket_name'], request.params['object_id'])
      response['x-goog-generation'] = str(obj['generation'])
    except Exception:  # pylint: disable=broad-except  (not found: the 404 stands)
      pass
  handler.__wrapped__ = download
  return handler


@pytest.fixture
def gcs(monkeypatch):
  download = _with_generation_header(emulator.objects.download)
  monkeypatch.setattr(emulator.objects, 'download', download)  # ?alt=media goes through it
  for _, methods in emulator.HANDLERS:
    if methods.get('GET') is download.__wrapped__:
      monkeypatch.setitem(methods, 'GET', download)
  port = _free_port()
  server = emulator.create_server('localhost', port, in_memory=True, default_bucket='bucket')
  server.start()
  yield f'http://localhost:{port}'
  server.stop()


def _listing(url):
  """Every object name in the emulator's bucket, through its JSON API."""
  import urllib.request  # pylint: disable=g-import-not-at-top
  names, token = [], ''
  while True:
    with urllib.request.urlopen(f'{url}/storage/v1/b/bucket/o?pageToken={token}') as r:
      page = json.load(r)
    names += [item['name'] for item in page.get('items', [])]
    token = page.get('nextPageToken')
    if not token:
      return names


def test_train_resume_analyse_sweep_on_gcs(gcs, digits_data_dir, tmp_path):
  cwd, home = tmp_path / 'cwd', tmp_path / 'home'
  cwd.mkdir(), home.mkdir()
  env = dict(os.environ, TENSORSTORE_GCS_HTTP_URL=gcs, STORAGE_EMULATOR_HOST=gcs,
             GOOGLE_AUTH_TOKEN_FOR_TESTING='offline', EPATH_USE_TF='false',
             HOME=str(home), TMPDIR=str(tmp_path), PYTHONPATH=os.path.join(REPO, 'tests'))
  script = SCRIPT.format(repo=REPO, data_dir=str(digits_data_dir))
  proc = subprocess.run([sys.executable, '-c', script], cwd=cwd, env=env, capture_output=True,
                        text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.split('RESULT ', 1)[1])
  assert out['first']['steps'] == 4 and out['again'] == out['first']
  assert out['gammas'] == [0.0, 1.0] and out['rows']['kd']['seeds'] == 1

  objects = set(_listing(gcs))
  for name in ('teacher_run/results.json', 'teacher_run/config.json', 'student/metrics.jsonl',
               'student/results.json', 'analysis/report.json', 'analysis/report.md',
               'analysis/tsne.png', 'sweep/kd_seed0/results.json', 'sweep/sweep.md'):
    assert name in objects, name
  assert any(n.startswith('teacher_run/teacher/4/') for n in objects)
  assert any(n.startswith('student/checkpoints/4/') for n in objects)
  # Nothing of the run landed on local disk: the working directory stays empty and HOME
  # holds only the libraries' own caches (TensorFlow's .keras, matplotlib's .config …).
  assert not list(cwd.iterdir())
  assert {p.name for p in home.iterdir()} <= {'.cache', '.config', '.keras'}
  ours = {'results.json', 'config.json', 'metrics.jsonl', 'report.md', 'sweep.md', 'tsne.png'}
  assert not [p for p in home.rglob('*') if p.name in ours]
