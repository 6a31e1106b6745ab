"""CIFAR-100, resnet20 → resnet20 (self-distillation), oracle KD, the released student's arguments."""
from configs import cifar


def get_config():
  return cifar.get_config('resnet20,resnet20,cifar100')
