"""oracle_jax.analysis and launch/analyze.py: metrics against independent computations,
streaming = one-shot, γ = 0 exactness, and the command end to end on digits."""
import functools
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import RecordedBars
from sklearn import metrics

from oracle_jax import analysis
from oracle_jax import checkpoints
from oracle_jax import data
from oracle_jax import losses
from oracle_jax import models
from oracle_jax import oracle

ROOT = pathlib.Path(__file__).parent.parent
TORCH_DIR = ROOT / 'tests' / 'data' / 'reference' / 'torch'
DIGITS = data.dataset_spec('digits')
PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def numpy_ece(probs, labels, num_bins):
  """Guo et al.'s ECE written out independently, in float64."""
  confidence = probs.max(-1).astype(np.float64)
  correct = probs.argmax(-1) == labels
  edges = np.linspace(0, 1, num_bins + 1)
  total = 0.0
  for lo, hi in zip(edges[:-1], edges[1:]):
    in_bin = (confidence > lo) & (confidence <= hi)
    if in_bin.any():
      total += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
  return total


def random_probs(n, num_classes, seed=0, scale=3.0):
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(n, num_classes)) * scale
  probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  return probs.astype(np.float32), rng.integers(0, num_classes, n)


def two_class_probs(confidence):
  """Probabilities [n, 2] whose prediction is class 0 with the given confidence ≥ 0.5."""
  return np.stack([confidence, 1 - confidence], -1).astype(np.float32)


# ----------------------------------------------------------------------------- metrics

def test_ece_equals_numpy():
  probs, labels = random_probs(1000, 10)
  for num_bins in (1, 10, 15):
    value, diagram = analysis.metrics.ece(probs, labels, num_bins)
    np.testing.assert_allclose(value, numpy_ece(probs, labels, num_bins), rtol=1e-5)
    assert diagram['count'].sum() == 1000 and len(diagram['count']) == num_bins


def test_ece_of_perfect_calibration_is_zero():
  # In each bin, the fraction of correct predictions equals its (single) confidence.
  confidence = np.repeat([0.55, 0.65, 0.75, 0.85, 0.95], 20)
  correct_in_bin = (np.arange(20)[None] < np.array([11, 13, 15, 17, 19])[:, None]).ravel()
  labels = np.where(correct_in_bin, 0, 1)
  value, diagram = analysis.metrics.ece(two_class_probs(confidence), labels, num_bins=10)
  assert value < 1e-6
  filled = diagram['count'] > 0
  np.testing.assert_allclose(diagram['accuracy'][filled], diagram['confidence'][filled],
                             atol=1e-6)


def test_ece_of_overconfidence_is_closed_form():
  # Confidence 0.9 everywhere, 60 % correct: ECE = |0.6 - 0.9| = 0.3.
  labels = np.where(np.arange(100) < 60, 0, 1)
  value, diagram = analysis.metrics.ece(two_class_probs(np.full(100, 0.9)), labels)
  np.testing.assert_allclose(value, 0.3, atol=1e-6)
  assert diagram['count'].max() == 100 and np.nansum(diagram['accuracy']) == 0.6


def test_bins_are_right_closed():
  # (m-1)/M < c <= m/M: 0.5 ends bin 0 of 2; 1.0 ends the last; 0 is in the first.
  np.testing.assert_array_equal(
      analysis.metrics.bin_index(jnp.array([0.0, 0.5, 0.51, 1.0]), 2), [0, 0, 1, 1])


def test_entropy_bits_equals_numpy():
  logits = np.random.default_rng(1).normal(size=(50, 7)) * 4
  for temperature in (1.0, 4.0):
    p = np.exp(logits / temperature)
    p /= p.sum(-1, keepdims=True)
    np.testing.assert_allclose(analysis.metrics.entropy_bits(logits, temperature),
                               -(p * np.log2(p)).sum(-1), rtol=1e-5, atol=1e-6)
  # Uniform over 8 classes: exactly 3 bits.
  np.testing.assert_allclose(analysis.metrics.entropy_bits(np.zeros((1, 8))), [3.0], rtol=1e-6)


def test_silhouette_equals_sklearn_and_hand_computation():
  x = np.random.default_rng(2).normal(size=(200, 5))
  y = np.random.default_rng(3).integers(0, 4, 200)
  np.testing.assert_allclose(analysis.metrics.silhouette(x, y), metrics.silhouette_score(x, y))
  # Points 0, 1 (class 0) and 4, 6 (class 1) on a line. s_i = (b - a) / max(a, b):
  # 0: a=1 b=5 → 0.8; 1: a=1 b=4 → 0.75; 4: a=2 b=3.5 → 3/7; 6: a=2 b=5.5 → 7/11.
  line = np.array([[0.0], [1.0], [4.0], [6.0]])
  np.testing.assert_allclose(analysis.metrics.silhouette(line, np.array([0, 0, 1, 1])),
                             np.mean([0.8, 0.75, 3 / 7, 7 / 11]))
  assert np.isnan(analysis.metrics.silhouette(line, np.zeros(4)))  # One cluster: undefined.


def test_streaming_equals_one_shot():
  logits = np.random.default_rng(4).normal(size=(300, 10)).astype(np.float32) * 3
  labels = np.random.default_rng(5).integers(0, 10, 300)
  mask = np.ones(300, bool)
  stats = functools.partial(analysis.metrics.batch_stats, num_bins=15, temperature=4.0)
  one_shot = jax.device_get(stats(logits, labels, mask))
  streamed = None
  for part in np.array_split(np.arange(300), 7):
    # Pad each batch with junk rows that the mask removes.
    pad = lambda a: np.concatenate([a[part], a[:5]])
    s = jax.device_get(stats(pad(logits), pad(labels), np.r_[mask[part], np.zeros(5, bool)]))
    streamed = s if streamed is None else jax.tree.map(np.add, streamed, s)
  for k in ('count', 'correct'):
    np.testing.assert_array_equal(streamed[k], one_shot[k])
  np.testing.assert_allclose(streamed['confidence'], one_shot['confidence'], rtol=1e-5)
  a, b = analysis.metrics.summarize(streamed), analysis.metrics.summarize(one_shot)
  assert a['top1'] == b['top1'] and a['num_examples'] == 300
  np.testing.assert_allclose(a['ece'], b['ece'], rtol=1e-5)
  np.testing.assert_allclose(a['entropy_bits'], b['entropy_bits'], rtol=1e-5)
  np.testing.assert_allclose(a['ece'], numpy_ece(
      analysis.metrics.soft_targets(logits, 1.0), labels, 15), rtol=1e-4)


def test_select_gamma_maximises_fine_silhouette():
  rows = [{'gamma': g, 'silhouette_fine': s}
          for g, s in ((0, 0.1), (0.5, 0.4), (1, 0.4), (5, float('nan')))]
  assert analysis.evaluation.select_gamma(rows) == 0.5  # Ties go to the smaller γ; NaN is skipped.
  assert analysis.override_line(0.5) == '--config.oracle.gamma=0.5'
  with pytest.raises(ValueError, match='silhouette'):
    analysis.evaluation.select_gamma([{'gamma': 1.0, 'silhouette_fine': float('nan')}])


def test_parse_gammas():
  assert analysis.command.parse_gammas(['1', '0', '0.5', '1']) == (0.0, 0.5, 1.0)
  with pytest.raises(ValueError, match='>= 0'):
    analysis.command.parse_gammas(['-1'])


# ----------------------------------------------------------------------------- evaluation

def train_digits_teacher(data_dir, steps=60):
  """Variables of a resnet8 briefly trained on digits (~97 % test accuracy)."""
  model = models.create('resnet8', 10)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
  tx = optax.sgd(optax.cosine_decay_schedule(0.1, steps), momentum=0.9, nesterov=True)
  opt_state = tx.init(variables['params'])

  @jax.jit
  def step(variables, opt_state, batch):
    def loss_fn(params):
      logits, updates = model.apply({'params': params,
                                     'batch_stats': variables['batch_stats']},
                                    data.normalize(batch['image'], DIGITS), train=True,
                                    mutable=['batch_stats'])
      return losses.cross_entropy(logits, batch['label']), updates
    grads, updates = jax.grad(loss_fn, has_aux=True)(variables['params'])
    delta, opt_state = tx.update(grads, opt_state)
    return {'params': optax.apply_updates(variables['params'], delta), **updates}, opt_state

  batches = data.train_iterator(DIGITS, data_dir=data_dir, global_batch_size=64, seed=0)
  for _, batch in zip(range(steps), batches):
    variables, opt_state = step(variables, opt_state,
                                {'image': batch['image'], 'label': batch['label']})
  return variables


@pytest.fixture(scope='module')
def digits_teacher(tmp_path_factory):
  """(data_dir, model, variables) of a resnet8 briefly trained on digits."""
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  return data_dir, models.create('resnet8', 10), train_digits_teacher(data_dir)


def synthetic_batches(n, batch_size, seed=0):
  """Eval-iterator-like host batches of n digits-shaped examples, the last one padded."""
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (n, 8, 8, 1), dtype=np.uint8)
  labels = rng.integers(0, 10, n).astype(np.int32)
  batches = []
  for start in range(0, n, batch_size):
    idx = np.arange(start, start + batch_size)
    mask = idx < n
    idx = np.where(mask, idx, 0)
    batches.append({'image': images[idx], 'label': labels[idx], 'mask': mask})
  return images, labels, batches


def test_evaluate_streams_sharded_batches(digits_teacher, monkeypatch):
  """Scratch stats = one-shot stats of direct logits; γ = 0 = scratch exactly; the
  sample holds the right examples' logits on x and x*; a bar counts the examples."""
  _, model, variables = digits_teacher
  assert jax.device_count() == 8
  n, gammas = 150, (0.0, 5.0)
  images, labels, batches = synthetic_batches(n, 32)
  recorded = RecordedBars(monkeypatch)
  out = analysis.evaluation.evaluate(model, variables, iter(batches), DIGITS, gammas=gammas,
                          global_batch_size=32, sample_size=100, num_bins=15,
                          temperature=4.0, num_examples=n)
  assert recorded.bars == [dict(desc='teacher on x and x* at 2 γ', unit='img', total=n,
                                updates=[32, 32, 32, 32, 22])]  # the padding is not counted
  stats = out['stats']
  for k in stats:  # Oracle at γ = 0 is scratch, bit for bit.
    np.testing.assert_array_equal(stats[k][1], stats[k][0])

  @jax.jit
  def direct_logits(x):  # Unsharded, one shot, without lax.map.
    logits_fn = functools.partial(model.apply, variables, train=False)
    return logits_fn(x), logits_fn(oracle.reinforce(logits_fn, x, labels, gamma=5.0))

  direct = jax.device_get(direct_logits(data.normalize(images, DIGITS)))
  for i, logits in ((0, direct[0]), (2, direct[1])):
    expected = analysis.metrics.summarize(jax.device_get(analysis.metrics.batch_stats(
        logits, labels, np.ones(n, bool), num_bins=15, temperature=4.0)))
    got = analysis.metrics.summarize({k: v[i] for k, v in stats.items()})
    assert got['num_examples'] == n
    np.testing.assert_allclose(got['top1'], expected['top1'], atol=100 / n + 1e-9)
    np.testing.assert_allclose(got['ece'], expected['ece'], atol=2 / n)
    np.testing.assert_allclose(got['entropy_bits'], expected['entropy_bits'], rtol=1e-5)
  assert np.abs(direct[1] - direct[0]).max() > 1e-2  # γ does move the outputs.

  sample = out['sample']
  assert len(sample['index']) == 100 and len(set(sample['index'])) == 100
  assert sample['index'].max() < n  # Padding never enters the sample.
  np.testing.assert_array_equal(sample['label'], labels[sample['index']])
  np.testing.assert_allclose(sample['logits'][:, 0], direct[0][sample['index']],
                             rtol=1e-4, atol=1e-4)
  # x* goes through a gradient, where float reordering can flip a ReLU near 0.
  np.testing.assert_allclose(sample['logits'][:, 2], direct[1][sample['index']], atol=2e-2)
  assert np.mean(np.abs(sample['logits'][:, 2] - direct[1][sample['index']]) < 1e-4) > 0.95


def test_evaluate_max_examples_and_batch_size_check(digits_teacher, monkeypatch, capsys):
  _, model, variables = digits_teacher
  _, _, batches = synthetic_batches(100, 32)
  recorded = RecordedBars(monkeypatch)
  out = analysis.evaluation.evaluate(model, variables, iter(batches), DIGITS, gammas=(1.0,),
                          global_batch_size=32, sample_size=10, max_examples=40,
                          num_examples=100)
  assert out['stats']['count'][0].sum() == 40
  assert out['sample']['index'].max() < 40
  assert recorded.bars[0]['total'] == 40 and recorded.bars[0]['updates'] == [32, 8]
  assert '40/40' in capsys.readouterr().err
  monkeypatch.setattr(jax, 'process_index', lambda: 1)  # the same pass elsewhere: no bar
  again = analysis.evaluation.evaluate(model, variables, iter(batches), DIGITS, gammas=(1.0,),
                            global_batch_size=32, sample_size=10, max_examples=40,
                            num_examples=100)
  jax.tree.map(np.testing.assert_array_equal, again, out)
  assert capsys.readouterr() == ('', '')
  with pytest.raises(ValueError, match='divisible by the 8 devices'):
    analysis.evaluation.evaluate(model, variables, iter(batches), DIGITS, gammas=(1.0,),
                      global_batch_size=12)


# ----------------------------------------------------------------------------- command

def analyze(*flags):
  env = dict(os.environ, PYTHONPATH='')  # The script must find the package by itself.
  return subprocess.run([sys.executable, str(ROOT / 'launch' / 'analyze.py'), *flags],
                        capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)


@pytest.fixture(scope='module')
def digits_report(tmp_path_factory, digits_teacher):
  data_dir, _, variables = digits_teacher
  tmp = tmp_path_factory.mktemp('analysis')
  teacher_dir = tmp / 'run' / 'teacher'
  checkpoints.save_model(str(teacher_dir), variables, model='resnet8', num_classes=10)
  result = analyze('--config=configs/default.py', '--config.teacher.model=resnet8',
                   f'--config.data_dir={data_dir}', f'--teacher={teacher_dir}',
                   '--gammas=0,1,5,25', '--tsne_examples=150', '--silhouette_examples=300',
                   '--select_gamma')
  assert result.returncode == 0, result.stderr[-3000:]
  return tmp / 'run' / 'analysis', result


def test_command_shows_its_progress(digits_report):
  _, result = digits_report
  bar = [l for l in result.stderr.replace('\r', '\n').splitlines() if 'x* at 4 γ' in l]
  assert bar[-1].startswith('teacher on x and x* at 4 γ: 100%') and '540/540' in bar[-1]
  assert 'img/s' in bar[-1]


def test_command_writes_every_table(digits_report):
  out, result = digits_report
  rows = json.loads((out / 'report.json').read_text())
  assert [r['gamma'] for r in rows] == [0, 1, 5, 25]
  for r in rows:
    for key in ('top1', 'ece', 'entropy_bits', 'silhouette_fine', 'top1_scratch'):
      assert isinstance(r[key], float), key
    assert 'silhouette_coarse' not in r  # digits has no superclasses.
    assert r['num_examples'] == 540 and 0 <= r['ece'] <= 1
    assert sum(r['reliability']['count']) == 540
  scratch = rows[0]
  # γ = 0: the oracle input is x, so every statistic equals scratch exactly.
  assert scratch['top1'] == scratch['top1_scratch']
  assert scratch['ece'] == scratch['ece_scratch']
  assert scratch['entropy_bits'] == scratch['entropy_bits_scratch']
  assert scratch['top1'] > 80  # The teacher has learned something...
  assert rows[2]['top1'] >= scratch['top1']  # ...and the oracle input helps it (Table 1).
  assert rows[2]['entropy_bits'] < scratch['entropy_bits']  # Sharper outputs (Table 3).

  md = (out / 'report.md').read_text()
  for section in ('## Table 1', '## Table 2', '## Table 3', '## Silhouette', '## Selected γ'):
    assert section in md
  selected = [r['gamma'] for r in rows if r['selected']]
  assert selected == [analysis.evaluation.select_gamma(rows_with_nan(rows))]
  line = analysis.override_line(selected[0])
  assert line in md and line in result.stdout.splitlines()
  assert (out / 'gamma_override.txt').read_text() == line + '\n'


def rows_with_nan(rows):
  return [{**r, 'silhouette_fine': float('nan') if r['silhouette_fine'] is None
           else r['silhouette_fine']} for r in rows]


def test_command_writes_every_figure(digits_report):
  out, _ = digits_report
  md = (out / 'report.md').read_text()
  for name in analysis.report.FIGURES:
    content = (out / name).read_bytes()
    assert content.startswith(PNG_MAGIC) and len(content) > 5000, name
    assert f']({name})' in md


def test_command_fails_clearly_without_the_data(tmp_path):
  """A released official CIFAR-100 teacher loads; only the missing data stops the run."""
  result = analyze('--config=configs/cifar.py:resnet20,resnet20',
                   f'--config.data_dir={tmp_path / "empty"}',
                   f'--teacher={TORCH_DIR / "cifar100_resnet20_state_dict.pth"}',
                   f'--out={tmp_path / "out"}')
  assert result.returncode != 0
  assert "Dataset 'cifar100' is not prepared" in result.stderr
  assert 'Traceback' not in result.stderr
  assert not (tmp_path / 'out').exists()
