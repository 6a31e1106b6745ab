"""Train the Tiny-ImageNet resnet18 teacher (small stem) with the official recipe."""
from configs import tiny_imagenet_r18_r18


def get_config(arg=None):
  c = tiny_imagenet_r18_r18.get_config(arg)
  c.method = 'scratch'
  c.oracle.enabled = False
  c.teacher.checkpoint = ''
  return c
