"""Entry point: `python launch/main.py --config=configs/<file>.py[:arg] --workdir=DIR`.

With no --config it runs the offline default (oracle_jax/demo.py on configs/default.py, as
launch/demo.py does with its default seeds); with one, that config's run.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import logging  # pylint: disable=g-import-not-at-top,wrong-import-position
from ml_collections import config_flags  # pylint: disable=g-import-not-at-top,wrong-import-position

from oracle_jax import cli, errors  # pylint: disable=g-import-not-at-top,wrong-import-position

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_DEFAULT_CONFIG = os.path.join(_REPO, 'configs', 'default.py')
cli.define_config(f'Experiment configuration file (path[:arg]); default {_DEFAULT_CONFIG}.')
flags.DEFINE_string('workdir', None, 'Run directory (default: runs/<config name>).')
flags.DEFINE_bool('dry_run', False, 'Validate config, data, teacher and devices, print the '
                  'plan, and exit without training or writing anything.')
cli.define_processes()
FLAGS = flags.FLAGS


def default_workdir():
  path, _, arg = config_flags.get_config_filename(FLAGS['config']).partition(':')
  name = os.path.splitext(os.path.basename(path))[0]
  return os.path.join('runs', name + (f'_{arg.replace(",", "_")}' if arg else ''))


def main(argv):
  if len(argv) > 1:
    raise errors.UserError(f'Unexpected arguments: {argv[1:]}')
  # Imported here so that --help is instant and flags parse before JAX starts.
  from oracle_jax import train  # pylint: disable=g-import-not-at-top
  cli.initialize_processes()
  config, workdir = FLAGS.config, FLAGS.workdir or default_workdir()
  if FLAGS.dry_run:
    run, _ = train.prepare(config)
    print(json.dumps(train.plan(config, run), indent=2))
  elif not cli.names_config(sys.argv):  # the command line, not the config, picks the program
    from oracle_jax import demo  # pylint: disable=g-import-not-at-top
    demo.run(config, workdir)
  else:
    results = train.train_and_evaluate(config, workdir)
    print(json.dumps(results, indent=2))


if __name__ == '__main__':
  logging.set_verbosity(logging.WARNING)  # orbax is very chatty at INFO
  cli.run(main, default_config=_DEFAULT_CONFIG)
