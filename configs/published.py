"""The baselines' CIFAR-100 recipes as their authors ran them (`configs/cifar.py:…,recipe=published`).

Not a config file itself: `cifar100(config, method)` rewrites a CIFAR-100 config in place.
Sources (read at these commits):
* KD, FitNet, AT, DKD — megvii-research/mdistiller @ e8c5bb3, `configs/cifar100/{kd,fitnet,
  at}.yaml` and `configs/cifar100/dkd/*.yaml` (SOLVER: SGD lr 0.05, momentum 0.9, weight decay
  5e-4, batch 64, 240 epochs, ×0.1 at 150/180/210), with the method settings of
  `mdistiller/engine/cfg.py` (@ a08d46f) the YAMLs leave at their defaults: KD τ 4, CE 0.1,
  KD 0.9; FitNet hint layer 2, CE 1, feature 100; AT p 2, CE 1, feature 1000; DKD CE 1, α 1,
  β 8 (2 or 6 for the pairs its YAMLs tune: configs/cifar.py `DKD_BETA`), τ 4, warm-up 20.
* SAD — clovaai/attention-feature-distillation @ 42a3077, `main.py` defaults (the same
  optimizer, weight decay 5e-4; KD α 0.9 at τ 4; β 200; qk_dim 128) and its README's
  CIFAR-100 command (`--beta 200`); loss CE + α·KL + β·AFD (`utils.train_kl`), features every
  residual block (`utils.py` LAYER; every second one of resnet110).
The oracle is off: the method as published. `--config.oracle.enabled=True` composes it on top.
"""

# Every CIFAR-100 recipe above shares this optimizer; it differs from the oracle-KD code's
# (common.py) only in the weight decay, 5e-4 instead of 2.5e-4.
WEIGHT_DECAY = 5e-4

# The CE weight of each method's loss.
CE_WEIGHT = {'kd': 0.1, 'fitnet': 1.0, 'at': 1.0, 'dkd': 1.0, 'sad': 1.0}
RECIPE_METHODS = tuple(CE_WEIGHT)  # the methods with a published recipe


def cifar100(c, method):
  """Sets `c` (a configs/common.py config) to `method`'s published CIFAR-100 recipe."""
  c.method = method
  c.oracle.enabled = False
  c.optimizer.weight_decay = WEIGHT_DECAY
  c.ce_weight = CE_WEIGHT[method]
  c.temperature = 4.0                 # mdistiller CFG.KD.TEMPERATURE; SAD --temperature
  if method == 'kd':
    c.alpha = 0.9                     # mdistiller CFG.KD.LOSS.KD_WEIGHT
  if method == 'sad':
    c.distill.sad_features = 'blocks'
  # FitNet, AT, DKD and SAD's own weights are common.distill_config()'s, which
  # are these sources' values (DKD's per-pair β is set by configs/cifar.py).
  return c
