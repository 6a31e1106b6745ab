"""The offline default: `python launch/demo.py [--workdir=runs/default] [--seeds=0,1,2,3,4]`.

A digits teacher (unless --config.teacher.checkpoint names one), its analysis, then
scratch, KD and oracle-KD students over --seeds (oracle_jax/demo.py), on the settings of
configs/default.py. `python launch/main.py` with no --config runs the same.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import logging  # pylint: disable=g-import-not-at-top,wrong-import-position

from oracle_jax import cli, errors  # pylint: disable=g-import-not-at-top,wrong-import-position

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                               'configs', 'default.py')
cli.define_config(f'The students\' configuration (path[:arg]); default {_DEFAULT_CONFIG}.')
flags.DEFINE_string('workdir', os.path.join('runs', 'default'), 'Run directory.')
cli.define_list('seeds', None, "The students' seeds; default oracle_jax/demo.py's SEEDS "
                '(0,1,2,3,4).', int, low=0, high=cli.MAX_SEED)
flags.DEFINE_integer('teacher_steps', None, "The teacher's training steps; default "
                     "oracle_jax/demo.py's TEACHER_STEPS (400).", lower_bound=1)
cli.define_processes()
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise errors.UserError(f'Unexpected arguments: {argv[1:]}')
  from oracle_jax import demo  # pylint: disable=g-import-not-at-top  (imports JAX)
  cli.initialize_processes()
  given = {'seeds': FLAGS.seeds, 'teacher_steps': FLAGS.teacher_steps}
  demo.run(FLAGS.config, FLAGS.workdir, **{k: v for k, v in given.items() if v is not None})


if __name__ == '__main__':
  logging.set_verbosity(logging.WARNING)  # orbax is very chatty at INFO
  cli.run(main, default_config=_DEFAULT_CONFIG)
