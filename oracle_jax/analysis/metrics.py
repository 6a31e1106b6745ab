"""The measurements of one set of teacher outputs: top-1, Expected Calibration Error and
its reliability diagram (paper Eq. 5), entropy in bits, silhouette (Eq. 6) and t-SNE.

Accuracy, ECE and entropy are sums of per-bin statistics that add across batches and
devices, so a split streams batch by batch. Bin counts are int32 (exact); confidence and
entropy sums are float32 (relative rounding ~1e-7 per batch added, so at worst ~1e-4
after ImageNet's train split). Units: `top1` in percent (as the paper's tables), `ece` as
a fraction in [0, 1] (Guo et al.), entropy in bits.
"""
import jax
import jax.numpy as jnp
import numpy as np


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
  # they are slower than one thread (benchmarks/README.md).
  with threadpoolctl.threadpool_limits(1, user_api='openmp'):
    return estimator.fit_transform(np.asarray(outputs, np.float32))
