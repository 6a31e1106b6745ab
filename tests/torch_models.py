"""The PyTorch models the Flax ones mirror, to load exported state_dicts with strict=True.

Copies of RepDistiller's `models/resnet.py` and `models/wrn.py` and of torchvision's
`models/resnet.py` (torchvision is not a dependency), reduced to their inference paths.
Two changes, neither touching a parameter's name or shape: the first conv takes
`in_channels` (the digits are grayscale), and the CIFAR heads pool adaptively (their
`AvgPool2d(8)` assumes 32-pixel inputs; on those both give the same numbers).
"""
import torch
import torch.nn.functional as F
from torch import nn


def _conv(c_in, c_out, kernel, stride):
  return nn.Conv2d(c_in, c_out, kernel, stride, padding=kernel // 2, bias=False)


class BasicBlock(nn.Module):
  """RepDistiller's and torchvision's BasicBlock (the same computation and names)."""
  expansion = 1

  def __init__(self, inplanes, planes, stride=1, downsample=None):
    super().__init__()
    self.conv1 = _conv(inplanes, planes, 3, stride)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = _conv(planes, planes, 3, 1)
    self.bn2 = nn.BatchNorm2d(planes)
    self.downsample = downsample

  def forward(self, x):
    out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
    return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
  """torchvision's Bottleneck (v1.5: the stride on the 3x3 conv)."""
  expansion = 4

  def __init__(self, inplanes, planes, stride=1, downsample=None):
    super().__init__()
    self.conv1 = _conv(inplanes, planes, 1, 1)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = _conv(planes, planes, 3, stride)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = _conv(planes, planes * 4, 1, 1)
    self.bn3 = nn.BatchNorm2d(planes * 4)
    self.downsample = downsample

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = F.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    return F.relu(out + (x if self.downsample is None else self.downsample(x)))


def _make_layer(block, inplanes, planes, blocks, stride):
  downsample = None
  if stride != 1 or inplanes != planes * block.expansion:
    downsample = nn.Sequential(
        nn.Conv2d(inplanes, planes * block.expansion, 1, stride, bias=False),
        nn.BatchNorm2d(planes * block.expansion))
  layers = [block(inplanes, planes, stride, downsample)]
  layers += [block(planes * block.expansion, planes) for _ in range(1, blocks)]
  return nn.Sequential(*layers)


class CifarResNet(nn.Module):
  """RepDistiller's ResNet (resnet8 … resnet110: filters 16, 16, 32, 64; x4: 32 … 256)."""

  def __init__(self, depth, num_filters, num_classes, in_channels=3):
    super().__init__()
    n = (depth - 2) // 6
    self.conv1 = nn.Conv2d(in_channels, num_filters[0], 3, padding=1, bias=False)
    self.bn1 = nn.BatchNorm2d(num_filters[0])
    self.layer1 = _make_layer(BasicBlock, num_filters[0], num_filters[1], n, 1)
    self.layer2 = _make_layer(BasicBlock, num_filters[1], num_filters[2], n, 2)
    self.layer3 = _make_layer(BasicBlock, num_filters[2], num_filters[3], n, 2)
    self.fc = nn.Linear(num_filters[3], num_classes)

  def forward(self, x):
    x = F.relu(self.bn1(self.conv1(x)))
    x = self.layer3(self.layer2(self.layer1(x)))
    return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class WideBlock(nn.Module):
  """RepDistiller's wrn.py BasicBlock (pre-activation, `convShortcut`)."""

  def __init__(self, in_planes, out_planes, stride):
    super().__init__()
    self.bn1 = nn.BatchNorm2d(in_planes)
    self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride, padding=1, bias=False)
    self.bn2 = nn.BatchNorm2d(out_planes)
    self.conv2 = nn.Conv2d(out_planes, out_planes, 3, 1, padding=1, bias=False)
    self.equal_in_out = in_planes == out_planes
    self.convShortcut = None if self.equal_in_out else nn.Conv2d(  # pylint: disable=invalid-name
        in_planes, out_planes, 1, stride, bias=False)

  def forward(self, x):
    pre = F.relu(self.bn1(x))
    out = self.conv2(F.relu(self.bn2(self.conv1(pre))))
    return (x if self.equal_in_out else self.convShortcut(pre)) + out


class NetworkBlock(nn.Module):

  def __init__(self, n, in_planes, out_planes, stride):
    super().__init__()
    self.layer = nn.Sequential(*[WideBlock(in_planes if i == 0 else out_planes, out_planes,
                                           stride if i == 0 else 1) for i in range(n)])

  def forward(self, x):
    return self.layer(x)


class WideResNet(nn.Module):

  def __init__(self, depth, widen_factor, num_classes, in_channels=3):
    super().__init__()
    n, widths = (depth - 4) // 6, [16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
    self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, padding=1, bias=False)
    self.block1 = NetworkBlock(n, 16, widths[0], 1)
    self.block2 = NetworkBlock(n, widths[0], widths[1], 2)
    self.block3 = NetworkBlock(n, widths[1], widths[2], 2)
    self.bn1 = nn.BatchNorm2d(widths[2])
    self.fc = nn.Linear(widths[2], num_classes)

  def forward(self, x):
    x = self.block3(self.block2(self.block1(self.conv1(x))))
    return self.fc(F.adaptive_avg_pool2d(F.relu(self.bn1(x)), 1).flatten(1))


class ImageNetResNet(nn.Module):
  """torchvision's ResNet; `small_stem`: conv1 3x3/1 and no max-pool (Tiny-ImageNet)."""

  def __init__(self, block, stage_sizes, num_classes, in_channels=3, small_stem=False):
    super().__init__()
    self.conv1 = (nn.Conv2d(in_channels, 64, 3, 1, padding=1, bias=False) if small_stem
                  else nn.Conv2d(in_channels, 64, 7, 2, padding=3, bias=False))
    self.bn1 = nn.BatchNorm2d(64)
    self.maxpool = nn.Identity() if small_stem else nn.MaxPool2d(3, 2, 1)
    inplanes = 64
    for i, blocks in enumerate(stage_sizes):
      planes = 64 * 2**i
      setattr(self, f'layer{i + 1}', _make_layer(block, inplanes, planes, blocks,
                                                 1 if i == 0 else 2))
      inplanes = planes * block.expansion
    self.fc = nn.Linear(inplanes, num_classes)

  def forward(self, x):
    x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


_CIFAR = {**{f'resnet{d}': (d, (16, 16, 32, 64)) for d in (8, 14, 20, 32, 44, 56, 110)},
          'resnet8x4': (8, (32, 64, 128, 256)), 'resnet32x4': (32, (32, 64, 128, 256))}
_IMAGENET = {'resnet18': (BasicBlock, (2, 2, 2, 2)), 'resnet34': (BasicBlock, (3, 4, 6, 3)),
             'resnet50': (Bottleneck, (3, 4, 6, 3)), 'resnet101': (Bottleneck, (3, 4, 23, 3))}


def create(name, num_classes, in_channels=3, small_stem=False):
  """The PyTorch model of the Flax model `name` (`oracle_jax.models.NAMES`)."""
  if name in _CIFAR:
    return CifarResNet(*_CIFAR[name], num_classes, in_channels)
  if name in _IMAGENET:
    return ImageNetResNet(*_IMAGENET[name], num_classes, in_channels, small_stem)
  _, depth, widen = name.split('_')
  return WideResNet(int(depth), int(widen), num_classes, in_channels)
