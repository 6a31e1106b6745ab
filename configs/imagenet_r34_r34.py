"""ImageNet, ResNet-34 → ResNet-34 (oracle self-distillation), mdistiller's recipe."""
from configs import imagenet_r34_r18


def get_config():
  c = imagenet_r34_r18.get_config()
  c.student.model = 'resnet34'
  return c
