"""Train a CIFAR teacher (supervised, method=scratch): --config=configs/cifar_teacher.py:resnet56[,cifar10].

Same recipe as the students (official code: 240 epochs, SGD 0.05, ×0.1 at 150/180/210).
The final model is kept in WORKDIR/teacher, ready for --config.teacher.checkpoint.
"""
from configs import common


def get_config(arg='resnet56'):
  model, _, dataset = arg.partition(',')
  c = common.base_config()
  c.dataset = dataset or 'cifar100'
  c.method = 'scratch'
  c.student.model = model
  c.teacher.model = model
  c.oracle.enabled = False
  return c
