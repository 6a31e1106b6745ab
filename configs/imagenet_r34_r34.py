"""ImageNet, ResNet-34 → ResNet-34 (oracle self-distillation), mdistiller's recipe; the
argument picks the method's recipe as in imagenet_r34_r18.py (`:dkd`, `:at`, …)."""
from configs import imagenet_r34_r18


def get_config(arg='kd'):
  c = imagenet_r34_r18.get_config(arg)
  c.student.model = 'resnet34'
  return c
