"""Tiny-ImageNet (64×64, 200 classes), resnet18 → resnet18, oracle KD.

ResNet-18 with the small-image stem (3×3/1 conv, no max-pool), the usual choice at 64
pixels; the official CIFAR/Tiny-ImageNet recipe (common.py). The teacher comes from
configs/tiny_imagenet_teacher.py (WORKDIR/teacher of that run).
Data: put tiny-imagenet-200.zip in <data_dir>/downloads/manual/ (prepared on first use).
"""
from configs import common


def get_config(arg=None):
  common.parse_arg(arg)  # takes none
  c = common.base_config()
  c.dataset = 'tiny_imagenet'
  c.teacher.model = c.student.model = 'resnet18'
  c.teacher.small_stem = c.student.small_stem = True
  c.teacher.checkpoint = 'runs/tiny_imagenet_teacher/teacher'
  return c
