"""Residual blocks shared by the model families, with PyTorch's names and semantics.

`BasicBlock` is both RepDistiller's CIFAR block and torchvision's (they are the same
computation: conv-BN-ReLU-conv-BN, plus an identity or 1x1-conv-BN shortcut, then ReLU);
`Bottleneck` is torchvision's v1.5 block (stride on the 3x3 conv).
"""
from typing import Any, Callable, Optional

import flax.linen as nn
import jax.numpy as jnp

from oracle_jax.models import layers


class Block(nn.Module):
  """Fields and conv/BN helpers every block shares."""
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


class BasicBlock(Block):
  expansion = 1

  @nn.compact
  def __call__(self, x):
    y = nn.relu(self.norm('bn1')(self.conv(self.features, 3, self.stride, 'conv1')(x)))
    y = self.norm('bn2')(self.conv(self.features, 3, 1, 'conv2')(y))
    return nn.relu(y + self.shortcut(x, self.features))


class Bottleneck(Block):
  expansion = 4

  @nn.compact
  def __call__(self, x):
    out = self.features * self.expansion
    y = nn.relu(self.norm('bn1')(self.conv(self.features, 1, 1, 'conv1')(x)))
    y = nn.relu(self.norm('bn2')(self.conv(self.features, 3, self.stride, 'conv2')(y)))
    y = self.norm('bn3')(self.conv(out, 1, 1, 'conv3')(y))
    return nn.relu(y + self.shortcut(x, out))
