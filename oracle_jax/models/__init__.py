"""Model registry: `create(name, num_classes)` returns a Flax Linen module.

Every module's `apply(variables, images_nhwc, train=False)` returns float32 logits;
`return_features=True` returns `(logits, features)` with features
`{'stem', 'stage1', …, 'pooled', 'logits'}` (stage outputs after their ReLU, as
RepDistiller's `is_feat=True`), the one API the feature distillers use; the CIFAR ResNets
add `'blocks'`, every residual block's output (for SAD at the official granularity).
Train mode needs `mutable=['batch_stats']`.
"""
import functools

import jax
import jax.numpy as jnp

from oracle_jax import errors
from oracle_jax.models.cifar_resnet import CifarResNet
from oracle_jax.models.blocks import BasicBlock, Bottleneck
from oracle_jax.models.imagenet_resnet import ImageNetResNet
from oracle_jax.models.layers import CLASSIFIER  # pylint: disable=unused-import  (re-exported)
from oracle_jax.models.wrn import WideResNet

_CIFAR_WIDTHS = (16, 16, 32, 64)
_CIFAR_X4_WIDTHS = (32, 64, 128, 256)

_REGISTRY = {
    **{f'resnet{d}': functools.partial(CifarResNet, depth=d, widths=_CIFAR_WIDTHS)
       for d in (8, 14, 20, 32, 44, 56, 110)},
    'resnet8x4': functools.partial(CifarResNet, depth=8, widths=_CIFAR_X4_WIDTHS),
    'resnet32x4': functools.partial(CifarResNet, depth=32, widths=_CIFAR_X4_WIDTHS),
    **{f'wrn_{d}_{k}': functools.partial(WideResNet, depth=d, widen_factor=k)
       for d in (16, 40) for k in (1, 2)},
    'resnet18': functools.partial(ImageNetResNet, stage_sizes=(2, 2, 2, 2), block=BasicBlock),
    'resnet34': functools.partial(ImageNetResNet, stage_sizes=(3, 4, 6, 3), block=BasicBlock),
    'resnet50': functools.partial(ImageNetResNet, stage_sizes=(3, 4, 6, 3), block=Bottleneck),
    'resnet101': functools.partial(ImageNetResNet, stage_sizes=(3, 4, 23, 3), block=Bottleneck),
}
IMAGENET_MODELS = ('resnet18', 'resnet34', 'resnet50', 'resnet101')
NAMES = tuple(sorted(_REGISTRY))


def create(name: str, num_classes: int, **kwargs):
  """Builds model `name`; kwargs: `dtype`, `conv_impl`, and `small_stem` (ImageNet ResNets)."""
  if name not in _REGISTRY:
    raise errors.ConfigError(f'Unknown model {name!r}; choose one of: {", ".join(NAMES)}.')
  if not isinstance(num_classes, int) or num_classes < 1:
    raise errors.ConfigError(f'num_classes must be a positive integer, got {num_classes!r}.')
  if 'small_stem' in kwargs and name not in IMAGENET_MODELS:
    if kwargs.pop('small_stem'):
      raise errors.ConfigError(f'small_stem applies to {IMAGENET_MODELS} only, not {name!r}.')
  return _REGISTRY[name](num_classes=num_classes, **kwargs)


def architecture(model_config) -> dict:
  """The architecture options beyond the name in a config's model block (`config.teacher`,
  `config.student`) or a model checkpoint's meta, as `create` takes and `meta` records
  them: `small_stem`, only when set."""
  return {'small_stem': True} if model_config.get('small_stem') else {}


def abstract_variables(name: str, num_classes: int, in_channels: int = 3, **kwargs):
  """Shapes of model `name`'s variables, without allocating them."""
  model = create(name, num_classes, **kwargs)
  return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, in_channels)))
