"""Layers shared by every model: PyTorch-exact BatchNorm and the conv/dense defaults.

The reference numbers come from PyTorch, so the layers follow PyTorch's semantics where
Flax's defaults differ (running variance, initialisers, padding at stride 2).
"""
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

# PyTorch's `momentum=0.1` is the weight of the new batch statistic; Flax-style 0.9 is
# the weight of the old running value.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5
# The final Dense layer's name in every model (and the final Linear's in their PyTorch
# originals): what a checkpoint of another class count differs in.
CLASSIFIER = 'fc'


class BatchNorm(nn.Module):
  """BatchNorm with PyTorch's train/eval semantics.

  Train mode normalises with the batch mean and the *biased* batch variance (two-pass,
  for accuracy) and updates the running variance with the *unbiased* one, as
  `torch.nn.BatchNorm2d` does; Flax's `nn.BatchNorm` stores the biased variance, which
  drifts from PyTorch by 0.1·var/(n-1) per step. Statistics are always float32.
  Under `jit` with a batch sharded over a mesh, the mean is over the global batch.
  """
  use_running_average: bool
  momentum: float = BN_MOMENTUM
  epsilon: float = BN_EPSILON
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    channels = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (channels,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (channels,), jnp.float32)
    running_mean = self.variable('batch_stats', 'mean', jnp.zeros, (channels,), jnp.float32)
    running_var = self.variable('batch_stats', 'var', jnp.ones, (channels,), jnp.float32)
    if self.use_running_average:
      inv = scale * jax.lax.rsqrt(running_var.value + self.epsilon)
      y = (x.astype(jnp.float32) - running_mean.value) * inv + bias
      return y.astype(self.dtype)
    y, mean, var = batch_norm_train(x, scale, bias, self.epsilon)
    if not self.is_initializing():
      n = x.size // channels
      # old + (1 − momentum)·(new − old): one product feeding one sum, which XLA:CPU always
      # contracts to one fused multiply-add. Written as momentum·old + (1 − momentum)·new,
      # either product may be contracted, and which one changes with the surrounding
      # program (a population member's statistics would differ from its run's in the last bit).
      update = lambda old, new: old + (1 - self.momentum) * (new - old)
      running_mean.value = update(running_mean.value, mean)
      running_var.value = update(running_var.value, var * (n / (n - 1)))
    return y.astype(self.dtype)


def _batch_stats(x):
  """Per-channel (last axis) float32 mean and biased variance, two-pass for accuracy."""
  axes = tuple(range(x.ndim - 1))
  x32 = x.astype(jnp.float32)
  mean = x32.mean(axes)
  return mean, jnp.square(x32 - mean).mean(axes)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_train(x, scale, bias, epsilon):
  """Train-mode BatchNorm over all axes but the last: (y, batch mean, batch variance),
  y = (x - mean) / sqrt(var + epsilon) * scale + bias in float32.

  Its VJP is the closed form (as PyTorch's batch_norm_backward): two per-channel sums and
  one elementwise pass, where autodiff of the two-pass statistics leaves XLA five
  reductions and several full-size temporaries per layer (slower on CPU,
  benchmarks/README.md). Cotangents of mean and var are honoured too.
  """
  return _batch_norm_train_fwd(x, scale, bias, epsilon)[0]


def _batch_norm_train_fwd(x, scale, bias, epsilon):
  mean, var = _batch_stats(x)
  y = (x.astype(jnp.float32) - mean) * (scale * jax.lax.rsqrt(var + epsilon)) + bias
  return (y, mean, var), (x, mean, var, scale)


def _batch_norm_train_bwd(epsilon, residuals, cotangents):
  x, mean, var, scale = residuals
  g, g_mean, g_var = cotangents
  axes = tuple(range(x.ndim - 1))
  n = x.size // x.shape[-1]
  inv = jax.lax.rsqrt(var + epsilon)
  centered = x.astype(jnp.float32) - mean
  x_hat = centered * inv
  d_bias = g.sum(axes)
  d_scale = (g * x_hat).sum(axes)
  # d/dx of y (through x, mean and var), plus mean's and var's own cotangents.
  d_x = ((scale * inv) * (g - (d_bias + x_hat * d_scale) / n)
         + g_mean / n + centered * (2 * g_var / n))
  return d_x.astype(x.dtype), d_scale, d_bias


batch_norm_train.defvjp(_batch_norm_train_fwd, _batch_norm_train_bwd)


def torch_linear_bias_init(fan_in: int) -> Callable:
  """PyTorch's default Linear bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / fan_in**0.5

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def pad(kernel_size: int):
  """Symmetric padding as PyTorch's `padding=k//2` (Flax 'SAME' pads (0, 1) at stride 2)."""
  p = kernel_size // 2
  return ((p, p), (p, p))


# Kaiming-normal fan-out, the init of RepDistiller's and torchvision's ResNets.
conv_kernel_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def conv(features, kernel_size, stride=1, *, name, dtype, conv_general_dilated=None):
  """A bias-free KxK conv with PyTorch padding; `conv_general_dilated` swaps the primitive
  (e.g. a CPU-faster weight gradient) without touching model code."""
  kwargs = {}
  if conv_general_dilated is not None:
    kwargs['conv_general_dilated'] = conv_general_dilated
  return nn.Conv(features, (kernel_size, kernel_size), strides=(stride, stride),
                 padding=pad(kernel_size), use_bias=False, kernel_init=conv_kernel_init,
                 dtype=dtype, param_dtype=jnp.float32, name=name, **kwargs)


def classifier(num_classes, fan_in, *, name=CLASSIFIER):
  """The final Linear layer with PyTorch's default init; float32 whatever the model's
  dtype, so softmax, KD and the oracle gradient start from accurate logits."""
  return nn.Dense(num_classes, kernel_init=nn.initializers.variance_scaling(
      1.0 / 3, 'fan_in', 'uniform'), bias_init=torch_linear_bias_init(fan_in),
                  dtype=jnp.float32, name=name)


def global_avg_pool(x):
  return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


def pool_and_classify(x, feats, num_classes, return_features):
  """Every model's tail: global mean, then `fc`; with `return_features`, also `feats`
  completed with `pooled` and `logits` (models/__init__.py). Called inside a model's
  compact `__call__`, so `fc` is that model's layer."""
  pooled = global_avg_pool(x)
  logits = classifier(num_classes, x.shape[-1])(pooled)
  return (logits, {**feats, 'pooled': pooled, 'logits': logits}) if return_features else logits
