"""CIFAR ResNets of RepDistiller / the official oracle-KD code (resnet8 … resnet110, x4).

Layout (reference README): stem 3x3 conv + BN + ReLU; stages of BasicBlocks
`relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`, shortcut = identity or
1x1-conv + BN where stride or width changes; global mean; fc. The official code puts the
ReLUs at the start of the next block instead of after the addition: same numbers.
Parameter names mirror PyTorch's (`layer2_0/downsample_conv` ↔ `layer2.0.downsample.0`).
"""
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from oracle_jax.models import layers
from oracle_jax.models.blocks import BasicBlock


class CifarResNet(nn.Module):
  """Depth 6n+2; `widths` = (stem, stage1, stage2, stage3)."""
  depth: int
  widths: Sequence[int]
  num_classes: int
  dtype: Any = jnp.float32
  conv_impl: Optional[Callable] = None

  @nn.compact
  def __call__(self, x, train: bool = False, return_features: bool = False):
    assert (self.depth - 2) % 6 == 0, 'CIFAR ResNet depth must be 6n+2'
    blocks_per_stage = (self.depth - 2) // 6
    x = x.astype(self.dtype)
    x = layers.conv(self.widths[0], 3, name='conv1', dtype=self.dtype,
                    conv_general_dilated=self.conv_impl)(x)
    x = nn.relu(layers.BatchNorm(not train, dtype=self.dtype, name='bn1')(x))
    feats, blocks = {'stem': x}, []
    for stage, width in enumerate(self.widths[1:], start=1):
      for i in range(blocks_per_stage):
        stride = 2 if stage > 1 and i == 0 else 1
        x = BasicBlock(width, stride, train, self.dtype, self.conv_impl,
                       name=f'layer{stage}_{i}')(x)
        blocks.append(x)
      feats[f'stage{stage}'] = x
    # Every block's output after its ReLU: the official SAD code's `is_feat` list (its
    # f1_act + f2_act + f3_act), which it distils block by block.
    feats['blocks'] = tuple(blocks)
    return layers.pool_and_classify(x, feats, self.num_classes, return_features)
