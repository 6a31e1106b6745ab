"""ImageNet ResNets with torchvision's layout (v1.5: stride on the 3x3 conv).

`small_stem=True` replaces the 7x7/2 conv + max-pool with one 3x3/1 conv, the usual
stem for 64-pixel Tiny-ImageNet. Names mirror torchvision's
(`layer3_0/downsample_bn` ↔ `layer3.0.downsample.1`).
"""
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from oracle_jax.models import layers


class ImageNetResNet(nn.Module):
  stage_sizes: Sequence[int]
  block: Any
  num_classes: int
  small_stem: bool = False
  dtype: Any = jnp.float32
  conv_impl: Optional[Callable] = None

  @nn.compact
  def __call__(self, x, train: bool = False, return_features: bool = False):
    x = x.astype(self.dtype)
    if self.small_stem:
      x = layers.conv(64, 3, 1, name='conv1', dtype=self.dtype,
                      conv_general_dilated=self.conv_impl)(x)
    else:
      x = layers.conv(64, 7, 2, name='conv1', dtype=self.dtype,
                      conv_general_dilated=self.conv_impl)(x)
    x = nn.relu(layers.BatchNorm(not train, dtype=self.dtype, name='bn1')(x))
    if not self.small_stem:
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    feats = {'stem': x}
    for stage, num_blocks in enumerate(self.stage_sizes, start=1):
      for i in range(num_blocks):
        stride = 2 if stage > 1 and i == 0 else 1
        x = self.block(64 * 2**(stage - 1), stride, train, self.dtype, self.conv_impl,
                       name=f'layer{stage}_{i}')(x)
      feats[f'stage{stage}'] = x
    return layers.pool_and_classify(x, feats, self.num_classes, return_features)
