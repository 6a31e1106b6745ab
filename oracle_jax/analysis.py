"""The paper's Section 4.1 measurements of a frozen teacher on x and on oracle inputs x*.

For every γ of a sweep, one pass over a split gives, on x ("scratch") and on x*:
top-1 (Table 1), Expected Calibration Error (Eq. 5, Table 2), the entropy in bits of
softmax(logits/τ) (Table 3), and on a uniform subsample the silhouette score (Eq. 6,
Figure 4) and t-SNE (Figure 3) of the teacher's outputs.

Which outputs: silhouette and t-SNE use the soft targets softmax(logits/τ), the very
thing the student distils from in Step B. Raw logits carry a per-example offset that
softmax ignores but Euclidean distances do not, so they would measure something the
student never sees.

Memory is flat in the number of images: accuracy, ECE and entropy are sums of per-bin
statistics, and the subsample keeps the examples with the k largest of i.i.d. uniform
keys (one per example: a uniform sample without replacement), all carried through one
jitted step. Bin counts are int32 (exact); confidence and entropy sums are float32
(relative rounding ~1e-7 per batch added, so at worst ~1e-4 after ImageNet's train split).

Units: `top1` in percent (as the paper's tables), `ece` as a fraction in [0, 1] (Guo et
al.), entropy in bits.
"""
import functools
import json
import math
import os

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from oracle_jax import checkpoints
from oracle_jax import conv
from oracle_jax import data
from oracle_jax import models
from oracle_jax import oracle
from oracle_jax import parallel

DEFAULT_GAMMAS = (0.0, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
FIGURES = ('reliability.png', 'tsne.png', 'gamma_sweep.png')


# ----------------------------------------------------------------------------- metrics

def bin_index(confidence, num_bins):
  """Equal-width bins ((m-1)/M, m/M] of Guo et al.; confidence 0 falls in the first."""
  inner_edges = jnp.linspace(0.0, 1.0, num_bins + 1, dtype=jnp.float32)[1:-1]
  return jnp.sum(confidence[..., None] > inner_edges, axis=-1)


def calibration_stats(probs, labels, mask=None, *, num_bins=15):
  """ECE's sufficient statistics per bin: `count`, `correct` and `confidence` sums.

  Sums add across batches (and devices), so the ECE of a split streams batch by batch.
  """
  probs = jnp.asarray(probs, jnp.float32)
  mask = jnp.ones(probs.shape[0], bool) if mask is None else jnp.asarray(mask, bool)
  confidence = jnp.max(probs, axis=-1)
  correct = (jnp.argmax(probs, axis=-1) == labels) & mask
  in_bin = jax.nn.one_hot(bin_index(confidence, num_bins), num_bins, dtype=jnp.int32)
  in_bin = in_bin * mask[:, None]
  return {'count': jnp.sum(in_bin, axis=0),
          'correct': jnp.sum(in_bin * correct[:, None], axis=0),
          'confidence': jnp.sum(in_bin * confidence[:, None], axis=0)}


def calibration(stats):
  """(ECE, reliability diagram) from summed `calibration_stats` (host, float64).

  ECE = Σ_b |B_b|/n · |acc(B_b) − conf(B_b)| = Σ_b |correct_b − confidence_b| / n.
  The diagram's accuracy and confidence are NaN in empty bins.
  """
  count = np.asarray(stats['count'], np.float64)
  correct = np.asarray(stats['correct'], np.float64)
  confidence = np.asarray(stats['confidence'], np.float64)
  if count.sum() == 0:
    raise ValueError('calibration statistics of zero examples.')
  ece = np.sum(np.abs(correct - confidence)) / count.sum()
  with np.errstate(invalid='ignore', divide='ignore'):
    diagram = {'accuracy': np.where(count > 0, correct / count, np.nan),
               'confidence': np.where(count > 0, confidence / count, np.nan),
               'count': count.astype(np.int64)}
  return float(ece), diagram


def ece(probs, labels, num_bins=15):
  """Expected Calibration Error of probabilities `[N, C]` (paper Eq. 5), and its diagram."""
  return calibration(jax.device_get(calibration_stats(probs, labels, num_bins=num_bins)))


def entropy_bits(logits, temperature=1.0):
  """Per-example entropy in bits of softmax(logits/τ)."""
  log_p = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32) / temperature, axis=-1)
  return -jnp.sum(jnp.exp(log_p) * log_p, axis=-1) / jnp.log(2.0)


def batch_stats(logits, labels, mask, *, num_bins, temperature):
  """All streaming statistics of one batch of logits: ECE bins (at τ = 1) and entropy."""
  stats = calibration_stats(jax.nn.softmax(logits), labels, mask, num_bins=num_bins)
  stats['entropy_bits'] = jnp.sum(jnp.where(mask, entropy_bits(logits, temperature), 0.0))
  return stats


def summarize(stats):
  """top1 (%), ece, entropy_bits (mean), num_examples and the reliability diagram."""
  ece_value, diagram = calibration(stats)
  n = int(diagram['count'].sum())
  return {'num_examples': n,
          'top1': 100.0 * float(np.sum(np.asarray(stats['correct'], np.float64))) / n,
          'ece': ece_value,
          'entropy_bits': float(stats['entropy_bits']) / n,
          'reliability': diagram}


def soft_targets(logits, temperature):
  """softmax(logits/τ) on the host: the outputs silhouette and t-SNE are computed on."""
  z = np.asarray(logits, np.float64) / temperature
  z = np.exp(z - z.max(axis=-1, keepdims=True))
  return z / z.sum(axis=-1, keepdims=True)


def silhouette(outputs, labels):
  """Mean silhouette score (paper Eq. 6, Euclidean); NaN when it is undefined
  (fewer than two clusters, or every point its own cluster)."""
  from sklearn import metrics  # pylint: disable=g-import-not-at-top
  num_clusters = len(np.unique(labels))
  if not 2 <= num_clusters <= len(labels) - 1:
    return float('nan')
  return float(metrics.silhouette_score(np.asarray(outputs), np.asarray(labels)))


def tsne(outputs, seed=0):
  """2-D t-SNE embedding of `outputs` [n, d]."""
  from sklearn import manifold  # pylint: disable=g-import-not-at-top
  import threadpoolctl  # pylint: disable=g-import-not-at-top  (scikit-learn's dependency)
  n = len(outputs)
  # sklearn requires perplexity < n; 30 is its default for larger samples.
  perplexity = min(30.0, max(1.0, (n - 1) / 3))
  estimator = manifold.TSNE(2, perplexity=perplexity, init='pca', random_state=seed)
  # Barnes-Hut's OpenMP threads spin-wait: on shared cores (XLA's threads, other jobs)
  # they made 1,000 points 4x slower than one thread (18 s vs 4.7 s on 2 busy cores).
  with threadpoolctl.threadpool_limits(1, user_api='openmp'):
    return estimator.fit_transform(np.asarray(outputs, np.float32))


def select_gamma(results):
  """γ with the highest fine-label silhouette (ties: the smaller γ).

  The paper explores γ "through the silhouette score" and plots it for sub- and
  super-classes; we rank by the fine (sub-class) labels, which every dataset has and
  which the student is trained on; the coarse score is reported beside it.
  """
  scored = [r for r in results if not math.isnan(r['silhouette_fine'])]
  if not scored:
    raise ValueError('No γ has a silhouette score; increase --silhouette_examples.')
  return max(scored, key=lambda r: (r['silhouette_fine'], -r['gamma']))['gamma']


def override_line(gamma):
  return f'--config.oracle.gamma={gamma:g}'


def parse_gammas(values):
  """Sorted distinct γ ≥ 0 from strings or numbers."""
  message = f'gammas must be a non-empty list of numbers >= 0, got {list(values)}.'
  try:
    gammas = sorted({float(v) for v in values})
  except ValueError:
    raise ValueError(message) from None
  if not gammas or gammas[0] < 0:
    raise ValueError(message)
  return tuple(gammas)


# ----------------------------------------------------------------------------- evaluation

def teacher_outputs(logits_fn, x, labels, gammas, *, steps, reference_batch_size):
  """Logits `[1 + G, B, C]`: on x, then on x* for each γ.

  Every input goes through the same mapped forward, so γ = 0 (x* = x bit for bit) gives
  exactly the scratch logits; `lax.map` also compiles each network pass once, not per γ.
  With one oracle step every γ starts from the same input gradient, so it is computed
  once (as a population shares it between members).
  """
  gammas = jnp.asarray(gammas, jnp.float32)
  if steps == 1:
    grad, _ = oracle.input_gradient(logits_fn, x, labels,
                                    reference_batch_size=reference_batch_size)
    x32 = x.astype(jnp.float32)
    x_stars = jax.lax.map(
        lambda gamma: oracle.reinforce_update(x32, grad, gamma).astype(x.dtype), gammas)
  else:
    x_stars = jax.lax.map(
        lambda gamma: oracle.reinforce(logits_fn, x, labels, gamma=gamma, steps=steps,
                                       reference_batch_size=reference_batch_size), gammas)
  return jax.lax.map(logits_fn, jnp.concatenate([x[None], x_stars]))


def init_state(num_outputs, num_classes, *, num_bins, sample_size, coarse):
  """Running sums for each of the `num_outputs` output sets, and an empty subsample."""
  zeros = lambda *shape, dtype=jnp.int32: jnp.zeros(shape, dtype)
  sample = {'key': jnp.full((sample_size,), -jnp.inf, jnp.float32),
            'index': zeros(sample_size),
            'logits': zeros(sample_size, num_outputs, num_classes, dtype=jnp.float32),
            'label': zeros(sample_size)}
  if coarse:
    sample['coarse_label'] = zeros(sample_size)
  return {'step': zeros(),
          'stats': {'count': zeros(num_outputs, num_bins),
                    'correct': zeros(num_outputs, num_bins),
                    'confidence': zeros(num_outputs, num_bins, dtype=jnp.float32),
                    'entropy_bits': zeros(num_outputs, dtype=jnp.float32)},
          'sample': sample}


def update_sample(sample, key, new):
  """Keeps the examples with the largest keys among the sample and `new`, sorted by key
  (descending), so any prefix of the sample is itself a uniform sample."""
  keys = jnp.concatenate([sample['key'], key])
  _, keep = jax.lax.top_k(keys, sample['key'].shape[0])
  return {k: jnp.concatenate([sample[k], new[k]])[keep] if k != 'key' else keys[keep]
          for k in sample}


def make_eval_step(model, spec, *, gammas, steps=1, reference_batch_size=64, num_bins=15,
                   temperature=4.0, max_examples=0, seed=0):
  """`(variables, state, batch) -> state`: one global batch into the running statistics."""

  def step(variables, state, batch):
    labels = batch['label']
    positions = state['step'] * labels.shape[0] + jnp.arange(labels.shape[0])
    mask = batch['mask'] & ((positions < max_examples) if max_examples else True)
    logits_fn = functools.partial(model.apply, variables, train=False)
    logits = teacher_outputs(logits_fn, data.normalize(batch['image'], spec), labels, gammas,
                             steps=steps, reference_batch_size=reference_batch_size)
    stats = jax.vmap(lambda l: batch_stats(l, labels, mask, num_bins=num_bins,
                                           temperature=temperature))(logits)
    key = jax.random.uniform(jax.random.fold_in(jax.random.key(seed), state['step']),
                             labels.shape)
    new = {'index': positions, 'logits': jnp.swapaxes(logits, 0, 1), 'label': labels}
    if 'coarse_label' in state['sample']:
      new['coarse_label'] = batch['coarse_label']
    return {'step': state['step'] + 1,
            'stats': jax.tree.map(jnp.add, state['stats'], stats),
            'sample': update_sample(state['sample'], jnp.where(mask, key, -jnp.inf), new)}

  return step


def evaluate(model, variables, batches, spec, *, gammas, global_batch_size, steps=1,
             reference_batch_size=64, num_bins=15, temperature=4.0, sample_size=2000,
             max_examples=0, mesh=None, compiler_options=None):
  """Streams `batches` (this process's part of each global batch) through the teacher
  (`compiler_options`: XLA options of the jitted step, e.g. `conv.compiler_options`).

  Returns host numpy `{'stats': {...: [1 + G, ...]}, 'sample': {...}}`; output set 0 is
  the teacher on x, set 1 + i on x* for `gammas[i]`. The sample holds up to
  `sample_size` examples, a uniform sample of the split (any prefix is one too).
  """
  mesh = parallel.make_mesh() if mesh is None else mesh
  parallel.check_batch_size(global_batch_size, mesh)
  step = jax.jit(
      make_eval_step(model, spec, gammas=gammas, steps=steps,
                     reference_batch_size=reference_batch_size, num_bins=num_bins,
                     temperature=temperature, max_examples=max_examples),
      in_shardings=(parallel.replicated(mesh), parallel.replicated(mesh),
                    parallel.batch_sharding(mesh)),
      out_shardings=parallel.replicated(mesh), donate_argnums=1,
      compiler_options=compiler_options or None)
  variables = parallel.replicate(variables, mesh)
  state = None
  for i, batch in enumerate(batches):
    if max_examples and i * global_batch_size >= max_examples:
      break
    if state is None:
      state = parallel.replicate(init_state(
          1 + len(gammas), spec.num_classes, num_bins=num_bins, sample_size=sample_size,
          coarse='coarse_label' in batch), mesh)
    state = step(variables, state, parallel.global_batch(batch, mesh))
  if state is None:
    raise ValueError('The split yielded no batches.')
  state = jax.device_get(state)
  valid = state['sample']['key'] > -np.inf
  return {'stats': state['stats'],
          'sample': {k: v[valid] for k, v in state['sample'].items() if k != 'key'}}


# ----------------------------------------------------------------------------- results

def _output_stats(stats, i):
  return {k: v[i] for k, v in stats.items()}


def results_per_gamma(evaluation, gammas, *, temperature, silhouette_examples):
  """(scratch, [one record per γ]): the report.json records, teacher on x and on x*."""
  sample = evaluation['sample']
  labels = {'fine': sample['label'][:silhouette_examples]}
  if 'coarse_label' in sample:
    labels['coarse'] = sample['coarse_label'][:silhouette_examples]

  def record(i):
    r = summarize(_output_stats(evaluation['stats'], i))
    outputs = soft_targets(sample['logits'][:silhouette_examples, i], temperature)
    for name, y in labels.items():
      r[f'silhouette_{name}'] = silhouette(outputs, y)
    return r

  scratch = record(0)
  oracle_records = []
  for i, gamma in enumerate(gammas, start=1):
    r = {'gamma': float(gamma), **record(i)}
    r.update({f'{k}_scratch': scratch[k] for k in ('top1', 'ece', 'entropy_bits')})
    oracle_records.append(r)
  return scratch, oracle_records


def tsne_embeddings(evaluation, gammas, *, temperature, num_examples):
  """{γ: 2-D embedding} of the soft targets on x (as γ = 0) and on x* for each γ > 0,
  over the sample's first `num_examples` (itself a uniform sample)."""
  logits = evaluation['sample']['logits'][:num_examples]
  columns = {0.0: 0, **{g: i for i, g in enumerate(gammas, start=1) if g > 0}}
  return {g: tsne(soft_targets(logits[:, i], temperature)) for g, i in columns.items()}


# ----------------------------------------------------------------------------- report

def _jsonable(value):
  if isinstance(value, dict):
    return {k: _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if isinstance(value, (np.ndarray, np.generic)):
    return _jsonable(value.tolist())
  if isinstance(value, float) and math.isnan(value):
    return None  # JSON has no NaN.
  return value


def _fmt(value, digits):
  return 'n/a' if value is None or math.isnan(value) else f'{value:.{digits}f}'


def markdown(results, scratch, setup, *, selected):
  """report.md: the paper's Tables 1-3, silhouette per γ, the selected γ and figures."""
  coarse = 'silhouette_coarse' in scratch
  lines = ['# Oracle teacher analysis', '']
  lines += [f'* {k}: {v}' for k, v in setup.items()] + ['']
  lines += ['## Table 1: top-1 accuracy (%) of the teacher on x (scratch) and x* (oracle)',
            '', '| γ | scratch | oracle | Δ |', '|---:|---:|---:|---:|']
  lines += [f'| {r["gamma"]:g} | {_fmt(scratch["top1"], 2)} | {_fmt(r["top1"], 2)} '
            f'| {r["top1"] - scratch["top1"]:+.2f} |' for r in results]
  lines += ['', f'## Table 2: Expected Calibration Error ({setup["ECE bins"]} equal-width '
            'bins, softmax at τ = 1; fraction)', '',
            '| γ | ECE on x | ECE on x* |', '|---:|---:|---:|']
  lines += [f'| {r["gamma"]:g} | {_fmt(scratch["ece"], 4)} | {_fmt(r["ece"], 4)} |'
            for r in results]
  lines += ['', f'## Table 3: mean entropy (bits) of softmax(logits/τ), τ = '
            f'{setup["τ"]}', '', '| γ | on x | on x* |', '|---:|---:|---:|']
  lines += [f'| {r["gamma"]:g} | {_fmt(scratch["entropy_bits"], 4)} '
            f'| {_fmt(r["entropy_bits"], 4)} |' for r in results]
  header = '| γ | fine' + (' | coarse |' if coarse else ' |')
  lines += ['', '## Silhouette score of softmax(logits/τ) on x* (Figure 4)', '', header,
            '|---:|---:|' + ('---:|' if coarse else '')]
  lines += [f'| {r["gamma"]:g} | {_fmt(r["silhouette_fine"], 4)}'
            + (f' | {_fmt(r["silhouette_coarse"], 4)} |' if coarse else ' |')
            for r in results]
  lines += ['', '## Selected γ', '',
            f'γ = {selected:g} maximises the fine-label silhouette score. For launch/main.py:',
            '', '```', override_line(selected), '```', '', '## Figures', '']
  lines += [f'![{name}]({name})' for name in FIGURES]
  return '\n'.join(lines) + '\n'


def _figure(ncols, nrows=1, size=4.0):
  from matplotlib import figure  # pylint: disable=g-import-not-at-top
  # A bare Figure renders with Agg and leaves pyplot's global backend alone.
  fig = figure.Figure(figsize=(size * ncols, size * nrows), layout='constrained')
  return fig, fig.subplots(nrows, ncols, squeeze=False).ravel()


def plot_reliability(path, diagrams):
  """Reliability diagrams: {title: diagram}; bars are per-bin accuracy, line is ideal."""
  fig, axes = _figure(len(diagrams))
  for ax, (title, d) in zip(axes, diagrams.items()):
    num_bins = len(d['count'])
    centers = (np.arange(num_bins) + 0.5) / num_bins
    ax.bar(centers, np.nan_to_num(d['accuracy']), width=1 / num_bins, edgecolor='k',
           label='accuracy')
    ax.bar(centers, np.nan_to_num(d['confidence'] - d['accuracy']),
           bottom=np.nan_to_num(d['accuracy']), width=1 / num_bins, color='tab:red',
           alpha=0.3, label='gap')
    ax.plot([0, 1], [0, 1], 'k--', lw=1)
    ax.set(title=title, xlabel='confidence', ylabel='accuracy', xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc='upper left')
  fig.savefig(path, dpi=100)


def plot_tsne(path, embeddings, colors, color_name):
  """One t-SNE panel per γ, points coloured by `colors` (superclass or class)."""
  fig, axes = _figure(min(4, len(embeddings)), math.ceil(len(embeddings) / 4))
  cmap = 'tab10' if colors.max() < 10 else 'tab20' if colors.max() < 20 else 'nipy_spectral'
  for ax, (gamma, xy) in zip(axes, embeddings.items()):
    points = ax.scatter(xy[:, 0], xy[:, 1], c=colors[:len(xy)], cmap=cmap, s=4)
    ax.set(title=f'x* at γ = {gamma:g}' if gamma else 'x (γ = 0)', xticks=[], yticks=[])
  if colors.max() < 20:  # A legend of 100 classes would hide the plot.
    axes[0].legend(*points.legend_elements(), loc='best', fontsize='small', ncol=2)
  for ax in axes[len(embeddings):]:
    ax.set_axis_off()
  fig.suptitle(f't-SNE of softmax(logits/τ), coloured by {color_name}')
  fig.savefig(path, dpi=100)


def plot_sweep(path, results, scratch):
  """Silhouette and top-1 versus γ, the best γ of each curve marked."""
  fig, (ax_s, ax_a) = _figure(2)
  gammas = np.array([r['gamma'] for r in results])
  for name in ('fine', 'coarse'):
    key = f'silhouette_{name}'
    if key in scratch:
      values = np.array([r[key] for r in results])
      ax_s.plot(gammas, values, 'o-', label=name)
      if not np.all(np.isnan(values)):
        best = np.nanargmax(values)
        ax_s.plot(gammas[best], values[best], 'k*', ms=14)
  top1 = np.array([r['top1'] for r in results])
  ax_a.plot(gammas, top1, 'o-', label='oracle (x*)')
  ax_a.axhline(scratch['top1'], color='gray', ls='--', label='scratch (x)')
  ax_a.plot(gammas[np.argmax(top1)], top1.max(), 'k*', ms=14)
  positive = gammas[gammas > 0]
  for ax, ylabel in ((ax_s, 'silhouette score'), (ax_a, 'top-1 (%)')):
    if positive.size:  # γ spans decades and includes 0: linear near 0, log beyond.
      ax.set_xscale('symlog', linthresh=positive.min())
    ax.set(xlabel='γ', ylabel=ylabel)
    ax.legend()
  fig.savefig(path, dpi=100)


def write_report(out_dir, results, scratch, *, setup, embeddings, tsne_colors,
                 tsne_color_name, diagrams, selected):
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, 'report.json'), 'w') as f:
    json.dump(_jsonable([{**r, 'selected': r['gamma'] == selected} for r in results]), f,
              indent=1)
  with open(os.path.join(out_dir, 'report.md'), 'w') as f:
    f.write(markdown(results, scratch, setup, selected=selected))
  plot_reliability(os.path.join(out_dir, 'reliability.png'), diagrams)
  plot_tsne(os.path.join(out_dir, 'tsne.png'), embeddings, tsne_colors, tsne_color_name)
  plot_sweep(os.path.join(out_dir, 'gamma_sweep.png'), results, scratch)


# ----------------------------------------------------------------------------- command

def create_teacher(config, checkpoint, device_count=None):
  """(spec, model, variables): the config's dataset and teacher, weights from `checkpoint`;
  the model's convolutions are `config.conv_impl`'s for `device_count` devices."""
  spec = data.dataset_spec(config.dataset)
  model_kwargs = {'small_stem': True} if config.teacher.get('small_stem') else {}
  model = models.create(config.teacher.model, spec.num_classes, **model_kwargs,
                        conv_impl=conv.get(config.conv_impl, device_count=device_count))
  variables = checkpoints.load_teacher(checkpoint, config.teacher.model, spec.num_classes,
                                       in_channels=spec.image_shape[-1], **model_kwargs)
  return spec, model, variables


def report(out_dir, evaluation, gammas, *, setup, temperature, silhouette_examples,
           tsne_examples):
  """Tables, γ selection and figures from `evaluate`'s output; writes them on process 0."""
  scratch, results = results_per_gamma(evaluation, gammas, temperature=temperature,
                                       silhouette_examples=silhouette_examples)
  selected = select_gamma(results)
  # At γ = 0 the x* panel would repeat x: show the largest γ instead.
  shown = results[gammas.index(selected if selected > 0 else gammas[-1])]
  diagrams = {f'x (ECE {scratch["ece"]:.4f})': scratch['reliability'],
              f'x* at γ = {shown["gamma"]:g} (ECE {shown["ece"]:.4f})': shown['reliability']}
  logging.info('Running t-SNE on %d examples per γ', tsne_examples)
  embeddings = tsne_embeddings(evaluation, gammas, temperature=temperature,
                               num_examples=tsne_examples)
  n = scratch['num_examples']
  setup = {**setup, 'τ': f'{temperature:g}', 'examples': n,
           'subsamples': f'silhouette on {min(silhouette_examples, n)}, t-SNE on '
                         f'{min(tsne_examples, n)} examples'}
  coarse = 'coarse_label' in evaluation['sample']
  if jax.process_index() == 0:
    write_report(out_dir, results, scratch, setup=setup, embeddings=embeddings,
                 tsne_colors=evaluation['sample']['coarse_label' if coarse else 'label'],
                 tsne_color_name='superclass' if coarse else 'class', diagrams=diagrams,
                 selected=selected)
  return {'scratch': scratch, 'results': results, 'selected': selected}


def run(config, *, teacher, out_dir, gammas=DEFAULT_GAMMAS, split=None, num_bins=15,
        temperature=None, tsne_examples=1000, silhouette_examples=2000, max_examples=0):
  """The whole analysis of `teacher` under `config`: writes the report into `out_dir`
  and returns `{'scratch', 'results' (the report.json records), 'selected'}`.

  Reads only `dataset`, `data_dir`, `teacher.{model,checkpoint,small_stem}`,
  `oracle.{steps,reference_batch_size}`, `temperature` and `batch_size` of `config`.
  """
  gammas = parse_gammas(gammas)
  temperature = config.temperature if temperature is None else temperature
  if num_bins < 1 or temperature <= 0 or tsne_examples < 2 or silhouette_examples < 2:
    raise ValueError('num_bins must be >= 1, temperature > 0, and tsne_examples and '
                     'silhouette_examples >= 2.')
  teacher = teacher or config.teacher.checkpoint
  mesh = parallel.make_mesh()
  spec, model, variables = create_teacher(config, teacher, mesh.size)
  parallel.check_batch_size(config.batch_size, mesh)  # Before reading any data.
  split = split or spec.eval_split
  batches = data.eval_iterator(spec, data_dir=config.data_dir or None,
                               global_batch_size=config.batch_size, split=split)
  logging.info('Evaluating %s on %s for γ = %s', teacher, spec.name, gammas)
  evaluation = evaluate(
      model, variables, batches, spec, gammas=gammas, global_batch_size=config.batch_size,
      steps=config.oracle.steps, reference_batch_size=config.oracle.reference_batch_size,
      num_bins=num_bins, temperature=temperature,
      sample_size=max(tsne_examples, silhouette_examples), max_examples=max_examples,
      mesh=mesh, compiler_options=conv.compiler_options(config.conv_impl, device_count=mesh.size))
  setup = {'teacher': f'{config.teacher.model} from {teacher}',
           'dataset': f'{spec.name}, split {split}',
           'oracle': f'{config.oracle.steps} step(s), γ quoted at batch '
                     f'{config.oracle.reference_batch_size}',
           'ECE bins': num_bins}
  return report(out_dir, evaluation, gammas, setup=setup, temperature=temperature,
                silhouette_examples=silhouette_examples, tsne_examples=tsne_examples)
