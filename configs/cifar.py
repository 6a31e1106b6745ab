"""CIFAR distillation for any teacher/student pair, under the oracle recipe or a baseline's own.

    --config=configs/cifar.py:resnet56,resnet20                  CIFAR-100, oracle KD
    --config=configs/cifar.py:resnet56,resnet20,cifar10          CIFAR-10, oracle KD
    --config=configs/cifar.py:resnet56,resnet20,method=dkd       DKD, oracle recipe
    --config=configs/cifar.py:resnet56,resnet20,method=dkd,recipe=published

The argument (common.parse_arg) is `teacher,student[,dataset][,method=M][,recipe=R]`:
dataset `cifar100` (default) or `cifar10`; method `kd` (default), `fitnet`, `at`, `dkd` or
`sad` (the library validates dataset and method); recipe

* `oracle` (default): the oracle-KD authors' recipe. For KD on the 16 CIFAR-100 pairs of
  resnet20/32/56/110 it is exactly the released student's run (`RELEASED`), with
  `reference_top1` = that run's best top-1; every other pair and CIFAR-10 keep the official
  code's defaults (common.py; the repository documents no other CIFAR-10 run), and the other
  methods their defaults (common.py) with mdistiller's per-pair DKD β (`DKD_BETA`) and,
  on a released pair, its γ.
* `published`: the method as its authors ran it on CIFAR-100 (configs/published.py), the
  oracle off; `--config.oracle.enabled=True` adds it on top (γ from `RELEASED` where the
  pair was released), so a sweep of `M,oracle_M` compares the two under one recipe.

The recipe follows from the argument, not from --config.method: a recipe sets several
keys at once, which a later override of `method` would not revisit. The teacher is the
official one, `zoo:official/<dataset>/<model>` (oracle_jax/zoo.py: downloaded, verified and
converted on first use); resnet110, which the zoo lacks, is read from the official
repository's layout, `teacher_models/<CIFAR100|CIFAR10>/resnet110/…`.
"""
from configs import common
from configs import published

# The 16 released CIFAR-100 students: myunghakLee/Distillation-for-High-Quality-Knowledge-
# Extraction @ 4c1143a, `student_models/CIFAR100/Hetero/<t>_2_<s>/<t>_2_<s>.json` (copied in
# tests/data/reference/released_students.json). (teacher, student): (γ, best top-1 %). γ is
# the logs' `lrp_mult`, read as the released code's `--lrp_gamma` (the logs come from an
# earlier internal version of it).
RELEASED = {
    ('resnet20', 'resnet20'): (0.2, 71.97), ('resnet20', 'resnet32'): (0.5, 73.38),
    ('resnet20', 'resnet56'): (0.5, 74.70), ('resnet20', 'resnet110'): (0.5, 76.09),
    ('resnet32', 'resnet20'): (0.5, 71.99), ('resnet32', 'resnet32'): (0.5, 74.32),
    ('resnet32', 'resnet56'): (0.5, 75.70), ('resnet32', 'resnet110'): (0.2, 76.69),
    ('resnet56', 'resnet20'): (0.5, 71.54), ('resnet56', 'resnet32'): (0.2, 73.96),
    ('resnet56', 'resnet56'): (0.2, 75.52), ('resnet56', 'resnet110'): (0.2, 76.73),
    ('resnet110', 'resnet20'): (0.2, 71.58), ('resnet110', 'resnet32'): (0.5, 73.42),
    ('resnet110', 'resnet56'): (0.2, 75.25), ('resnet110', 'resnet110'): (0.2, 77.22),
}
# What every released run shares besides γ: the CE weight depends on the teacher only
# (the released runs' `ce_weight`); τ 2, α 1, one refinement step, and the optimizer of
# common.py (SGD 0.05, momentum 0.9, wd 2.5e-4, batch 64, 240 epochs, ×0.1 at 150/180/210).
RELEASED_CE_WEIGHT = {'resnet20': 1.0, 'resnet32': 0.8, 'resnet56': 0.5, 'resnet110': 0.1}
RELEASED_TEMPERATURE = 2.0

# mdistiller's per-pair DKD β on CIFAR-100 (`configs/cifar100/dkd/*.yaml`); every other
# pair keeps its default CFG.DKD.BETA = 8 (`config.distill.dkd_beta`).
DKD_BETA = {('resnet56', 'resnet20'): 2.0, ('resnet110', 'resnet32'): 2.0,
            ('wrn_40_2', 'wrn_16_2'): 6.0, ('wrn_40_2', 'wrn_40_1'): 6.0}

# The official teachers oracle_jax's zoo holds (`python -m oracle_jax.zoo list`;
# tests/test_configs.py checks it against the zoo): every official one but resnet110.
ZOO_TEACHERS = ('resnet20', 'resnet32', 'resnet56')
RECIPES = ('oracle', 'published')


def teacher_checkpoint(teacher, dataset):
  """The official teacher: from the zoo where it holds it, else from the official
  repository's layout (CIFAR-100 state_dicts model.pth, CIFAR-10 pickled modules best.pth)."""
  if teacher in ZOO_TEACHERS:
    return f'zoo:official/{dataset}/{teacher}'
  filename = 'model.pth' if dataset == 'cifar100' else 'best.pth'
  return f'teacher_models/{dataset.upper()}/{teacher}/{filename}'


def get_config(arg='resnet56,resnet20'):
  arg = common.parse_arg(arg, teacher='resnet56', student='resnet20', dataset='cifar100',
                         method='kd', recipe='oracle')
  teacher, student, dataset, method = arg.teacher, arg.student, arg.dataset, arg.method
  if arg.recipe not in RECIPES:
    raise common.ArgumentError(f'recipe must be one of {RECIPES}, got {arg.recipe!r}.')
  c = common.base_config()
  c.dataset, c.method = dataset, method
  c.teacher.model, c.student.model = teacher, student
  c.teacher.checkpoint = teacher_checkpoint(teacher, dataset)
  if dataset == 'cifar100':
    c.distill.dkd_beta = DKD_BETA.get((teacher, student), c.distill.dkd_beta)
  released = RELEASED.get((teacher, student)) if dataset == 'cifar100' else None
  if released:
    c.oracle.gamma = released[0]
  if arg.recipe == 'published':
    if dataset != 'cifar100' or method not in published.RECIPE_METHODS:
      raise common.ArgumentError(
          f'recipe=published exists for CIFAR-100 and methods {", ".join(published.RECIPE_METHODS)} '
          f'only (mdistiller and the official SAD code publish no other); got {dataset} and '
          f'{method}.')
    published.cifar100(c, method)
  elif released and method == 'kd':
    c.temperature, c.alpha = RELEASED_TEMPERATURE, 1.0
    c.ce_weight = RELEASED_CE_WEIGHT[teacher]
    c.reference_top1 = released[1]
  return c
