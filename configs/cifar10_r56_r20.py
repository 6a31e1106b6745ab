"""CIFAR-10, resnet56 → resnet20, oracle KD with the official recipe."""
from configs import cifar


def get_config():
  return cifar.get_config('resnet56,resnet20,cifar10')
