"""CIFAR-100, resnet20 → resnet20 (self-distillation), oracle KD, official recipe."""
from configs import cifar


def get_config():
  return cifar.get_config('resnet20,resnet20,cifar100')
