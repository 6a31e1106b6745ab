"""Wide ResNets of RepDistiller (`models/wrn.py`, after Zagoruyko & Komodakis).

Pre-activation blocks: `bn1-relu` → conv1 → `bn2-relu` → conv2, added to the input or,
where widths differ, to a 1x1 `shortcut` conv of the pre-activated input; then a final
`bn1-relu`, global mean and fc. Widths 16, 16k, 32k, 64k; depth 6n+4.
Names mirror PyTorch's (`block2_0/shortcut` ↔ `block2.layer.0.convShortcut`).
"""
from typing import Any, Callable, Optional

import flax.linen as nn
import jax.numpy as jnp

from oracle_jax.models import layers
from oracle_jax.models.blocks import Block


class WideBlock(Block):

  @nn.compact
  def __call__(self, x):
    pre = nn.relu(self.norm('bn1')(x))
    y = self.conv(self.features, 3, self.stride, 'conv1')(pre)
    y = self.conv(self.features, 3, 1, 'conv2')(nn.relu(self.norm('bn2')(y)))
    if x.shape[-1] == self.features:
      return x + y
    # RepDistiller: the shortcut reads the *pre-activated* input when widths differ.
    return self.conv(self.features, 1, self.stride, 'shortcut')(pre) + y


class WideResNet(nn.Module):
  depth: int
  widen_factor: int
  num_classes: int
  dtype: Any = jnp.float32
  conv_impl: Optional[Callable] = None

  @nn.compact
  def __call__(self, x, train: bool = False, return_features: bool = False):
    assert (self.depth - 4) % 6 == 0, 'WRN depth must be 6n+4'
    n = (self.depth - 4) // 6
    widths = (16 * self.widen_factor, 32 * self.widen_factor, 64 * self.widen_factor)
    x = layers.conv(16, 3, name='conv1', dtype=self.dtype,
                    conv_general_dilated=self.conv_impl)(x.astype(self.dtype))
    feats = {'stem': x}
    for stage, width in enumerate(widths, start=1):
      for i in range(n):
        stride = 2 if stage > 1 and i == 0 else 1
        x = WideBlock(width, stride, train, self.dtype, self.conv_impl,
                      name=f'block{stage}_{i}')(x)
      feats[f'stage{stage}'] = x
    x = nn.relu(layers.BatchNorm(not train, dtype=self.dtype, name='bn1')(x))
    return layers.pool_and_classify(x, feats, self.num_classes, return_features)
