"""Step A of oracle distillation: the relevance-reinforced ("oracle") input x*.

    x_{k+1} = x_k − γ · |x_k| ⊙ ∂CE_i(f_T(x_k), y_i)/∂x_k / reference_batch_size

The official code differentiates the *batch-mean* CE at batch 64, so each example's
gradient carries 1/64 and its γ values mean "γ at batch 64". Dividing each example's own
CE gradient by `reference_batch_size` keeps those γ values while making x* of an image
independent of the batch size, the device count and the other images in the batch; at
batch 64 it equals the official x*. Each further step restarts from the previous iterate
as a constant (the official `rec_num`). No gradient flows through x*.
"""
import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp

from oracle_jax import losses


@dataclasses.dataclass(frozen=True)
class Settings:
  """The oracle's settings for a compiled step, read once from `config.oracle`."""
  enabled: bool
  gamma: float
  steps: int = 1
  reference_batch_size: int = 64

  @classmethod
  def from_config(cls, oracle_config):
    return cls(enabled=bool(oracle_config.enabled), gamma=oracle_config.gamma,
               steps=oracle_config.steps, reference_batch_size=oracle_config.reference_batch_size)


def _validate(gamma, steps, reference_batch_size):
  if isinstance(gamma, (int, float)) and gamma < 0:
    raise ValueError(f'oracle gamma must be >= 0, got {gamma}.')
  if steps < 1:
    raise ValueError(f'oracle steps must be >= 1, got {steps}.')
  if reference_batch_size < 1:
    raise ValueError(f'reference_batch_size must be >= 1, got {reference_batch_size}.')


def input_gradient(logits_fn: Callable, x, labels, *, reference_batch_size: int = 64):
  """`(∂CE_i/∂x / reference_batch_size per example, logits_fn(x))`: one forward and one
  backward pass (`jax.grad`, the logits as its auxiliary output).

  `logits_fn` must treat examples independently (an eval-mode network): the gradient of
  the summed CE is then the per-example gradient of each example's own CE.
  """
  def summed_ce(x_k):
    logits = logits_fn(x_k)
    ce = losses.cross_entropy(logits, labels) * labels.shape[0]
    return ce / reference_batch_size, logits

  return jax.grad(summed_ce, has_aux=True)(x)


def reinforce_update(x_k, grad, gamma):
  """One oracle step in float32: x_k − γ · |x_k| ⊙ grad (γ may be an array that broadcasts)."""
  return x_k - gamma * grad.astype(jnp.float32) * jnp.abs(x_k)


def iterate(gradient_fn: Callable, x, first_gradient, *, gamma, steps: int = 1):
  """x* in float32 from x and its input gradient `first_gradient`: `steps` updates, each
  later one from `gradient_fn(x_k)`, the gradient at the previous iterate. Callers that
  share one gradient among several γ (a population) pass it in once."""
  x_k, grad = jax.lax.stop_gradient(x).astype(jnp.float32), first_gradient
  for step in range(steps):
    if step:
      grad = gradient_fn(x_k)
    x_k = reinforce_update(x_k, grad, gamma)
  return x_k


def reinforce_and_logits(logits_fn: Callable, x, labels, *, gamma, steps: int = 1,
                         reference_batch_size: int = 64):
  """Returns `(x*, logits_fn(x))`: the first input gradient's forward pass gives the
  teacher's logits on x for free, which callers use for metrics."""
  _validate(gamma, steps, reference_batch_size)
  gradient = functools.partial(input_gradient, logits_fn, labels=labels,
                               reference_batch_size=reference_batch_size)
  grad, logits_x = gradient(jax.lax.stop_gradient(x))
  # Later gradients are taken in x's dtype (the models cast inside), the update in float32.
  x_star = iterate(lambda x_k: gradient(x_k.astype(x.dtype))[0], x, grad, gamma=gamma,
                   steps=steps)
  return jax.lax.stop_gradient(x_star).astype(x.dtype), jax.lax.stop_gradient(logits_x)


def reinforce(logits_fn: Callable, x, labels, *, gamma, steps: int = 1,
              reference_batch_size: int = 64):
  """x* with x's shape and dtype; works under `jit`, `vmap` and sharded `jit`.

  Args:
    logits_fn: `x -> logits`, e.g. `lambda x: model.apply(variables, x, train=False)`.
    x: the normalized input batch (NHWC for the bundled models).
    labels: integer ground-truth labels `[B]`.
    gamma: step size γ (at `reference_batch_size`); γ = 0 returns x unchanged.
    steps: number of refinement steps (the official `rec_num`).
    reference_batch_size: the batch size γ is quoted at (64 in the paper's code).
  """
  _validate(gamma, steps, reference_batch_size)
  if isinstance(gamma, (int, float)) and gamma == 0:
    return x
  x_star, _ = reinforce_and_logits(logits_fn, x, labels, gamma=gamma, steps=steps,
                                   reference_batch_size=reference_batch_size)
  return x_star


def make_reinforce(model, *, gamma, steps: int = 1, reference_batch_size: int = 64,
                   compiler_options=None):
  """A jitted `(variables, x, labels) -> x*` for a Flax classifier in eval mode.
  `compiler_options`, e.g. the second half of `conv.choose('auto')`, go to `jax.jit` (on one
  CPU device they give convolutions to XLA's multi-threaded kernels)."""

  @functools.partial(jax.jit, compiler_options=compiler_options or None)
  def apply(variables, x, labels):
    logits_fn = functools.partial(model.apply, variables, train=False)
    return reinforce(logits_fn, x, labels, gamma=gamma, steps=steps,
                     reference_batch_size=reference_batch_size)

  return apply
