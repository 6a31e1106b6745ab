"""Train a CIFAR teacher (supervised, method=scratch): --config=configs/cifar_teacher.py:resnet56[,cifar10].

Same recipe as the students (official code: 240 epochs, SGD 0.05, ×0.1 at 150/180/210).
The final model is kept in WORKDIR/teacher, ready for --config.teacher.checkpoint.
"""
from configs import common


def get_config(arg='resnet56'):
  arg = common.parse_arg(arg, model='resnet56', dataset='cifar100')
  c = common.base_config()
  c.dataset = arg.dataset
  c.method = 'scratch'
  c.student.model = arg.model
  c.teacher.model = arg.model
  c.oracle.enabled = False
  return c
