"""CIFAR-100, resnet56 → resnet20, oracle KD, the released student's arguments."""
from configs import cifar


def get_config():
  return cifar.get_config('resnet56,resnet20,cifar100')
