"""Every `python launch/*.py` command that README.md and docs/*.md show parses as written.

Each command's flags and config (file, argument, overrides) go through the command's own
flag parsing in a subprocess, and the configs of its runs through
`validation.validate_config`. The data they name is not here (CIFAR, ImageNet), so nothing is trained: the
cluster recipes (tests/test_launch_scripts.py) and the offline default run for real
elsewhere.
"""
import json
import pathlib
import re
import shlex
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from oracle_jax import data, models, sweep, validation

from image_folders import make_folder  # pylint: disable=g-bad-import-order

REPO = pathlib.Path(__file__).resolve().parent.parent
PAGES = [REPO / 'README.md', *sorted((REPO / 'docs').glob('*.md'))]
SCRIPTS = {'launch/main.py': 'configs/default.py', 'launch/demo.py': 'configs/default.py',
           'launch/sweep.py': None, 'launch/analyze.py': None}

# Defines one launch script's flags (runs nothing else), parses one command line and
# prints the config and the sweep flags as JSON; no JAX is imported for this.
_PARSE = r'''
import json, runpy, sys
from absl import flags
script, default_config, argv = sys.argv[1], sys.argv[2] or None, sys.argv[3:]
runpy.run_path(script, run_name='flags_only')
from oracle_jax import cli
cli.parse_flags([script, *argv], default_config)
f = flags.FLAGS
sweep = {k: f[k].value for k in ('methods', 'seeds', 'gammas') if k in f}
print(json.dumps({'config': json.loads(f.config.to_json()), 'sweep': sweep}))
'''


def documented_commands():
  """{script: [argv, …]} of every `python launch/<script>.py …` line in a bash block."""
  commands = {script: [] for script in SCRIPTS}
  for page in PAGES:
    for block in re.findall(r'```bash\n(.*?)\n```', page.read_text(), re.S):
      for line in block.replace('\\\n', ' ').splitlines():
        words = shlex.split(line, comments=True)
        if words[:1] == ['python'] and words[1] in SCRIPTS and '--config=...' not in words:
          commands[words[1]].append(words[2:])
  return commands


def test_the_docs_show_every_launch_script():
  counts = {script: len(argvs) for script, argvs in documented_commands().items()}
  assert all(counts.values()), counts
  assert counts['launch/main.py'] >= 6, counts


def parsed(script, argv):
  """(config, sweep flags) of one documented command line, parsed by its script."""
  proc = subprocess.run([sys.executable, '-c', _PARSE, script, SCRIPTS[script] or '', *argv],
                        cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode == 0, f'{script} {shlex.join(argv)}: {proc.stderr[-3000:]}'
  out = json.loads(proc.stdout.splitlines()[-1])
  return ml_collections.ConfigDict(out['config']), out['sweep']


@pytest.fixture(scope='module')
def image_folder(tmp_path_factory):
  """The stand-in for the folders of images the docs name (`folder:DIR`), which are not here."""
  root = tmp_path_factory.mktemp('images')
  make_folder(root, per_class=(2, 1))
  return root


@pytest.mark.parametrize('script', sorted(SCRIPTS))
def test_documented_commands_parse(script, image_folder, tmp_path):
  """Each command line parses; a run's config (every run of a sweep's grid) validates."""
  for argv in documented_commands()[script]:
    config, sweep_flags = parsed(script, argv)
    if data.is_folder(config.dataset):
      config.dataset, config.data_dir = f'folder:{image_folder}', str(tmp_path)
    offline_default = script == 'launch/demo.py' or not any(
        a.startswith('--config=') for a in argv)  # its teacher is one it trains first
    if script == 'launch/analyze.py' or offline_default:  # the config names the data
      assert data.spec_for(config).num_classes > 0
      continue
    configs = [config]
    if sweep_flags:
      names = sweep.with_gammas(sweep_flags['methods'], sweep_flags['gammas'])
      configs = [c for _, _, c in sweep.grid(config, names, sweep_flags['seeds'])]
    for c in configs:
      validation.validate_config(c)


def test_readme_python_block_runs():
  """'The oracle in your own code', as written, on a random resnet56 and two images."""
  block, = re.findall(r'```python\n(.*?)\n```', (REPO / 'README.md').read_text(), re.S)
  model = models.create('resnet56', 100)
  x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
  scope = {'variables': model.init(jax.random.key(0), x), 'x': x,
           'labels': np.array([3, 7])}
  exec(block, scope)  # pylint: disable=exec-used  (the README's own code)
  x_star = scope['x_star']  # the second form's
  assert x_star.shape == x.shape and x_star.dtype == x.dtype
  assert 0 < np.abs(np.asarray(x_star) - x).max() < 1
  jitted = scope['reinforce'](scope['variables'], x, scope['labels'])  # the first form's
  np.testing.assert_allclose(jitted, x_star, rtol=1e-4, atol=1e-5)
