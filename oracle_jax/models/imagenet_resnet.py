"""ImageNet ResNets with torchvision's layout (v1.5: stride on the 3x3 conv).

`small_stem=True` replaces the 7x7/2 conv + max-pool with one 3x3/1 conv, the usual
stem for 64-pixel Tiny-ImageNet. Names mirror torchvision's
(`layer3_0/downsample_bn` ↔ `layer3.0.downsample.1`).
"""
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from oracle_jax.models import layers


class _Block(nn.Module):
  features: int
  stride: int
  train: bool
  dtype: Any = jnp.float32
  conv_impl: Optional[Callable] = None

  def conv(self, features, kernel, stride, name):
    return layers.conv(features, kernel, stride, name=name, dtype=self.dtype,
                       conv_general_dilated=self.conv_impl)

  def norm(self, name):
    return layers.BatchNorm(not self.train, dtype=self.dtype, name=name)

  def shortcut(self, x, out_features):
    if self.stride != 1 or x.shape[-1] != out_features:
      x = self.norm('downsample_bn')(self.conv(out_features, 1, self.stride, 'downsample_conv')(x))
    return x


class BasicBlock(_Block):
  expansion = 1

  @nn.compact
  def __call__(self, x):
    y = nn.relu(self.norm('bn1')(self.conv(self.features, 3, self.stride, 'conv1')(x)))
    y = self.norm('bn2')(self.conv(self.features, 3, 1, 'conv2')(y))
    return nn.relu(y + self.shortcut(x, self.features))


class Bottleneck(_Block):
  expansion = 4

  @nn.compact
  def __call__(self, x):
    out = self.features * self.expansion
    y = nn.relu(self.norm('bn1')(self.conv(self.features, 1, 1, 'conv1')(x)))
    y = nn.relu(self.norm('bn2')(self.conv(self.features, 3, self.stride, 'conv2')(y)))
    y = self.norm('bn3')(self.conv(out, 1, 1, 'conv3')(y))
    return nn.relu(y + self.shortcut(x, out))


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
    pooled = layers.global_avg_pool(x)
    logits = layers.classifier(self.num_classes, x.shape[-1], dtype=self.dtype)(pooled)
    feats.update(pooled=pooled, logits=logits)
    return (logits, feats) if return_features else logits
