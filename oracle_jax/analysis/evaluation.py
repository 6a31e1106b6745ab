"""The compiled evaluation: one pass over a split through the frozen teacher on x and on
x* for every γ, into running statistics and a uniform subsample; then one record per γ.

Memory is flat in the number of images: the statistics are sums (`metrics`), and the
subsample keeps the examples with the k largest of i.i.d. uniform keys (one per example:
a uniform sample without replacement), all carried through one jitted step.
"""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from oracle_jax import data
from oracle_jax import errors
from oracle_jax import metrics_io
from oracle_jax import oracle
from oracle_jax import parallel
from oracle_jax.analysis import metrics


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
    stats = jax.vmap(lambda l: metrics.batch_stats(l, labels, mask, num_bins=num_bins,
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


def counting(step):
  """`step` that also returns the examples counted so far: a value the loop can wait on
  (the state itself is donated to the next step)."""

  def counted_step(variables, state, batch):
    state = step(variables, state, batch)
    return state, jnp.sum(state['stats']['count'][0])

  return counted_step


def evaluate(model, variables, batches, spec, *, gammas, global_batch_size, steps=1,
             reference_batch_size=64, num_bins=15, temperature=4.0, sample_size=2000,
             max_examples=0, num_examples=None, mesh=None, compiler_options=None):
  """Streams `batches` (this process's part of each global batch) through the teacher
  (`compiler_options`: XLA options of the jitted step, from `conv.choose`), a bar
  counting the examples (`num_examples`: the split's, for the bar's total and ETA).

  Returns host numpy `{'stats': {...: [1 + G, ...]}, 'sample': {...}}`; output set 0 is
  the teacher on x, set 1 + i on x* for `gammas[i]`. The sample holds up to
  `sample_size` examples, a uniform sample of the split (any prefix is one too).
  """
  mesh = parallel.make_mesh() if mesh is None else mesh
  parallel.check_batch_size(global_batch_size, mesh)
  step = jax.jit(
      counting(make_eval_step(model, spec, gammas=gammas, steps=steps,
                              reference_batch_size=reference_batch_size, num_bins=num_bins,
                              temperature=temperature, max_examples=max_examples)),
      in_shardings=(parallel.replicated(mesh), parallel.replicated(mesh),
                    parallel.batch_sharding(mesh)),
      out_shardings=parallel.replicated(mesh), donate_argnums=1,
      compiler_options=compiler_options or None)
  variables = parallel.replicate(variables, mesh)
  state = counted = None
  total = min(filter(None, (num_examples, max_examples)), default=None)
  desc = f'teacher on x and x* at {len(gammas)} γ'
  with metrics_io.progress_bar(total, 'img', desc=desc) as bar:
    for i, batch in enumerate(batches):
      if max_examples and i * global_batch_size >= max_examples:
        break
      if state is None:
        state = parallel.replicate(init_state(
            1 + len(gammas), spec.num_classes, num_bins=num_bins, sample_size=sample_size,
            coarse='coarse_label' in batch), mesh)
      previous = counted
      state, counted = step(variables, state, parallel.global_batch(batch, mesh))
      if previous is not None:  # one step behind: the device keeps the next step queued
        bar.update(int(previous) - bar.n)
    if counted is not None:
      bar.update(int(counted) - bar.n)
  if state is None:
    raise ValueError('The split yielded no batches.')
  state = jax.device_get(state)
  valid = state['sample']['key'] > -np.inf
  return {'stats': state['stats'],
          'sample': {k: v[valid] for k, v in state['sample'].items() if k != 'key'}}


def _output_stats(stats, i):
  return {k: v[i] for k, v in stats.items()}


def results_per_gamma(evaluation, gammas, *, temperature, silhouette_examples):
  """(scratch, [one record per γ]): the report.json records, teacher on x and on x*."""
  sample = evaluation['sample']
  labels = {'fine': sample['label'][:silhouette_examples]}
  if 'coarse_label' in sample:
    labels['coarse'] = sample['coarse_label'][:silhouette_examples]

  def record(i):
    r = metrics.summarize(_output_stats(evaluation['stats'], i))
    outputs = metrics.soft_targets(sample['logits'][:silhouette_examples, i], temperature)
    for name, y in labels.items():
      r[f'silhouette_{name}'] = metrics.silhouette(outputs, y)
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
  return {g: metrics.tsne(metrics.soft_targets(logits[:, i], temperature)) for g, i in columns.items()}


def select_gamma(results):
  """γ with the highest fine-label silhouette (ties: the smaller γ).

  The paper explores γ "through the silhouette score" and plots it for sub- and
  super-classes; we rank by the fine (sub-class) labels, which every dataset has and
  which the student is trained on; the coarse score is reported beside it.
  """
  scored = [r for r in results if not math.isnan(r['silhouette_fine'])]
  if not scored:
    raise errors.ConfigError('No γ has a silhouette score; increase --silhouette_examples.')
  return max(scored, key=lambda r: (r['silhouette_fine'], -r['gamma']))['gamma']
