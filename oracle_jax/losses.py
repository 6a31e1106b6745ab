"""Losses as pure functions of arrays (no model code here).

`kd_loss` is RepDistiller's / the official code's `DistillKL`: KL summed over classes,
averaged over the batch, times τ². The baselines' losses (DKD, AT, FitNet) follow; their
weights and the modules some of them train live in `oracle_jax.methods`. Teacher
arguments pass through `stop_gradient`: no gradient ever reaches the teacher or x*.
"""
import jax
import jax.numpy as jnp
import numpy as np

_HIGHEST = jax.lax.Precision.HIGHEST


def cross_entropy(logits, labels, *, label_smoothing: float = 0.0):
  """Mean softmax cross entropy against integer labels (optionally label-smoothed)."""
  log_p = jax.nn.log_softmax(logits.astype(jnp.float32))
  targets = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
  if label_smoothing:
    targets = targets * (1 - label_smoothing) + label_smoothing / logits.shape[-1]
  return -jnp.mean(jnp.sum(targets * log_p, axis=-1))


def kd_loss(student_logits, teacher_logits, temperature):
  """τ² · mean_batch Σ_c softmax(t/τ)·(log softmax(t/τ) − log softmax(s/τ)) (Hinton et al.).

  Gradients flow into the student only: the teacher's logits are constants here.
  """
  teacher_logits = jax.lax.stop_gradient(teacher_logits)
  log_p_t = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / temperature)
  log_p_s = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature)
  kl = jnp.sum(jnp.exp(log_p_t) * (log_p_t - log_p_s), axis=-1)
  return jnp.mean(kl) * temperature**2


def l2_normalize(x, axis=-1, eps=1e-12):
  """`torch.nn.functional.normalize`: x / max(‖x‖₂, eps)."""
  norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True))
  return x / jnp.maximum(norm, eps)


def _pool_matrix(n_in, n_out):
  """Row i averages input bins floor(i·n_in/n_out) … ceil((i+1)·n_in/n_out) − 1."""
  m = np.zeros((n_out, n_in), np.float32)
  for i in range(n_out):
    start, end = (i * n_in) // n_out, -(-((i + 1) * n_in) // n_out)
    m[i, start:end] = 1.0 / (end - start)
  return m


def adaptive_avg_pool(x, out_hw):
  """`torch.nn.functional.adaptive_avg_pool2d` on NHWC, to any size (smaller or larger)."""
  if tuple(x.shape[1:3]) == tuple(out_hw):
    return x
  return jnp.einsum('ih,bhwc,jw->bijc', _pool_matrix(x.shape[1], out_hw[0]), x,
                    _pool_matrix(x.shape[2], out_hw[1]), precision=_HIGHEST)


def as_float32(x):
  return jnp.asarray(x).astype(jnp.float32)


def _kl(log_p, log_q):
  """Σ_c p·(log p − log q) per example (p = 0 entries contribute 0, as torch's kl_div)."""
  return jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)


def dkd_parts(student_logits, teacher_logits, labels, *, temperature=4.0):
  """(TCKD, NCKD) of Decoupled KD, each τ²-scaled and averaged over the batch.

  mdistiller `mdistiller/distillers/DKD.py::dkd_loss`: TCKD is the KL between the binary
  distributions (p_target, Σ p_non-target) of softmax(z/τ); NCKD the KL between softmax over
  the non-target classes, obtained by subtracting 1000 from the target logit after the
  division by τ. The binary log-probabilities are computed in log space (logsumexp over
  the non-target classes) rather than as log of summed probabilities: equal in exact
  arithmetic, and never log(0).
  """
  s = as_float32(student_logits) / temperature
  t = as_float32(jax.lax.stop_gradient(teacher_logits)) / temperature
  gt = jax.nn.one_hot(labels, s.shape[-1], dtype=jnp.bool_)

  def binary_log_probs(z):
    log_p = jax.nn.log_softmax(z)
    log_target = jnp.sum(jnp.where(gt, log_p, 0.0), axis=-1)
    log_other = jax.nn.logsumexp(jnp.where(gt, -jnp.inf, log_p), axis=-1)
    return jnp.stack([log_target, log_other], axis=-1)

  tckd = jnp.mean(_kl(binary_log_probs(t), binary_log_probs(s)))
  nckd = jnp.mean(_kl(jax.nn.log_softmax(t - 1000.0 * gt), jax.nn.log_softmax(s - 1000.0 * gt)))
  return tckd * temperature**2, nckd * temperature**2


def dkd_loss(student_logits, teacher_logits, labels, *, alpha=1.0, beta=8.0, temperature=4.0):
  """Decoupled KD (Zhao et al., CVPR 2022): α·TCKD + β·NCKD, τ² included, no warm-up.

  Defaults α = 1, β = 8, τ = 4: mdistiller `CFG.DKD` (CIFAR-100). The warm-up factor
  min(epoch / 20, 1) of mdistiller's `DKD.forward_train` is the caller's (see `DKD`).
  """
  tckd, nckd = dkd_parts(student_logits, teacher_logits, labels, temperature=temperature)
  return alpha * tckd + beta * nckd


def attention_map(feature, p=2):
  """Zagoruyko & Komodakis: mean over channels of |f|^p, flattened, L2-normalised per example."""
  a = jnp.mean(jnp.abs(as_float32(feature)) ** p, axis=-1)
  return l2_normalize(a.reshape(a.shape[0], -1))


def attention_transfer_loss(student_feature, teacher_feature, *, p=2):
  """AT for one NHWC feature pair: mean over (batch, positions) of the squared difference of
  the attention maps; the larger map is first adaptive-average-pooled to the smaller.

  RepDistiller `distiller_zoo/AT.py::Attention.at_loss` (p = 2 there; |f| makes odd p
  meaningful on features that are not post-ReLU). The weight β = 1000, on the sum over
  stages, is the caller's (see `AT`).
  """
  teacher_feature = jax.lax.stop_gradient(teacher_feature)
  hw = tuple(min(s, t) for s, t in zip(student_feature.shape[1:3], teacher_feature.shape[1:3]))
  a_s = attention_map(adaptive_avg_pool(as_float32(student_feature), hw), p)
  a_t = attention_map(adaptive_avg_pool(as_float32(teacher_feature), hw), p)
  return jnp.mean(jnp.square(a_s - a_t))


def hint_loss(student_regressed, teacher_feature):
  """FitNet (Romero et al.): mean squared error, RepDistiller `distiller_zoo/FitNet.py`
  (`nn.MSELoss()`). The weight 100 is the caller's (see `FitNet`)."""
  teacher_feature = jax.lax.stop_gradient(teacher_feature)
  return jnp.mean(jnp.square(as_float32(student_regressed) - as_float32(teacher_feature)))
