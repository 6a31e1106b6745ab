"""The offline default's settings: scikit-learn's bundled 8×8 digits, no download needed.

`python launch/main.py` (no --config) and `python launch/demo.py` run the offline default on
them (oracle_jax/demo.py): a resnet20 teacher, then students three ways (scratch, KD,
oracle KD) over several seeds, with mean ± std and paired differences. As any config,
`--config=configs/default.py` is one student's run (give it --config.teacher.checkpoint).
Sizes from a pilot (teacher 400 steps ≈ 98.5 % test accuracy; students on a
20 % subset, where distillation has room to help).
"""
from configs import common


def get_config(arg=None):
  common.parse_arg(arg)  # takes none
  c = common.base_config()
  c.dataset = 'digits'
  c.teacher.model = 'resnet20'
  c.student.model = 'resnet8'
  c.batch_size = 64
  c.train_steps = 300
  c.train_examples = 251                 # 20 % of the 1,257 training digits
  c.schedule.name = 'cosine'
  c.optimizer.nesterov = True
  c.optimizer.weight_decay = 5e-4
  c.eval_every_epochs = 0.0              # evaluate at the end only
  c.log_every_steps = 50
  c.checkpoint_every_steps = 0
  c.oracle.gamma = 5.0                   # where the digits teacher's oracle accuracy peaks
  return c
