"""Losses as pure functions of arrays (no model code here).

`kd_loss` is RepDistiller's / the official code's `DistillKL`: KL summed over classes,
averaged over the batch, times τ².
"""
import jax
import jax.numpy as jnp


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
