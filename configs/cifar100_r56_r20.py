"""CIFAR-100, resnet56 → resnet20, oracle KD, the released student's arguments."""
from configs import cifar
from configs import common


def get_config(arg=None):
  common.parse_arg(arg)  # takes none: configs/cifar.py takes the pair
  return cifar.get_config('resnet56,resnet20,cifar100')
