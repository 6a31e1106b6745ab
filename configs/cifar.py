"""CIFAR distillation for any teacher/student pair: the paper's 16 CIFAR-100 pairs.

    --config=configs/cifar.py:resnet110,resnet32            (CIFAR-100)
    --config=configs/cifar.py:resnet56,resnet20,cifar10     (CIFAR-10)

Recipe: the official code's defaults (see common.py); with --config.method=dkd, mdistiller's
β for the pairs it tuned on CIFAR-100 (`DKD_BETA`). The teacher is read from the
official repository's layout (`teacher_models/<CIFAR100|CIFAR10>/<model>/…`), where its
released `.pth` files go; override with --config.teacher.checkpoint=….
"""
from configs import common
from oracle_jax import errors

# mdistiller's per-pair DKD β on CIFAR-100 (`configs/cifar100/dkd/*.yaml`); every other
# pair keeps its default CFG.DKD.BETA = 8 (`config.distill.dkd_beta`).
DKD_BETA = {('resnet56', 'resnet20'): 2.0, ('resnet110', 'resnet32'): 2.0,
            ('wrn_40_2', 'wrn_16_2'): 6.0, ('wrn_40_2', 'wrn_40_1'): 6.0}


def get_config(arg='resnet56,resnet20'):
  parts = arg.split(',')
  if len(parts) not in (2, 3):
    raise errors.ConfigError(f'configs/cifar.py takes "teacher,student[,dataset]", got {arg!r}.')
  teacher, student = parts[:2]
  dataset = parts[2] if len(parts) == 3 else 'cifar100'
  c = common.base_config()
  c.dataset = dataset
  c.teacher.model, c.student.model = teacher, student
  if dataset == 'cifar100':
    c.distill.dkd_beta = DKD_BETA.get((teacher, student), c.distill.dkd_beta)
  # The official release: CIFAR-100 teachers are state_dicts named model.pth, CIFAR-10
  # teachers whole pickled modules named best.pth.
  filename = 'model.pth' if dataset == 'cifar100' else 'best.pth'
  c.teacher.checkpoint = f'teacher_models/{dataset.upper()}/{teacher}/{filename}'
  return c
