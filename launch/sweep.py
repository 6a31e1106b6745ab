"""A grid of methods × oracle × seeds for one config, and its table.

    python launch/sweep.py --config=configs/cifar.py:resnet56,resnet20 --workdir=runs/sweep \
        --methods=kd,oracle_kd,dkd,oracle_dkd --seeds=0,1,2
    python launch/sweep.py --config=configs/cifar.py:resnet56,resnet20 --workdir=runs/gamma \
        --methods=kd,oracle_kd --gammas=0.2,0.5,1,5 --seeds=0,1   # a γ search

Each run lives in WORKDIR/<method>_seed<seed> and resumes if interrupted (with
--population=auto, the default, variants that can share one program train as one
population, checkpointed in WORKDIR/populations/); the table
(last- and best-epoch top-1, mean ± std over seeds, paired difference from --baseline) is
printed and written to WORKDIR/sweep.md and WORKDIR/sweep.csv.

On a pod or cluster every process runs the same command (launch/tpu_pod.sh sweep,
launch/slurm.sh sweep): a population's members are then split over the processes'
devices, each process reading every member's batches.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import logging  # pylint: disable=g-import-not-at-top,wrong-import-position

from oracle_jax import cli, errors  # pylint: disable=g-import-not-at-top,wrong-import-position

cli.define_config()
flags.DEFINE_string('workdir', None, 'Directory of the grid.', required=True)
cli.define_list('methods', ['kd', 'oracle_kd'], "Variants: a method, or 'oracle_<method>'.")
cli.define_list('seeds', [0, 1, 2], 'Seeds.', int, low=0, high=cli.MAX_SEED)
cli.define_list('gammas', [], 'γ search: every oracle variant once per γ (named e.g. '
                'oracle_kd_gamma0.5); default: the config\'s oracle.gamma.', float, low=0,
                nonempty=False)
flags.DEFINE_string('baseline', 'kd', 'Variant the paired differences are taken from.')
flags.DEFINE_enum('population', 'auto', ['auto', 'off'],
                  'auto: variants that can share one program (one distillation method with '
                  'or without the oracle, plus scratch; same models, data and schedule) train '
                  'as one population (one program); off: one run after another. '
                  'The table is the same either way.')
flags.DEFINE_bool('dry_run', False, 'Validate config, data, teacher and devices, print the '
                  'plan (sizes, and the runs each population holds), and exit.')
cli.define_processes()
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise errors.UserError(f'Unexpected arguments: {argv[1:]}')
  if FLAGS.config is None:
    raise errors.UserError('--config is required, e.g. --config=configs/default.py.')
  import jax  # pylint: disable=g-import-not-at-top
  from oracle_jax import fileio, sweep  # pylint: disable=g-import-not-at-top
  cli.initialize_processes()
  names, seeds = sweep.with_gammas(FLAGS.methods, FLAGS.gammas), FLAGS.seeds
  if FLAGS.dry_run:
    print(json.dumps(sweep.plan(FLAGS.config, names, seeds, population=FLAGS.population),
                     indent=2))
    return
  results = sweep.run_grid(FLAGS.config, FLAGS.workdir, names, seeds, population=FLAGS.population)
  rows = sweep.summarize(results, FLAGS.baseline)
  table = sweep.report(results, FLAGS.baseline)
  if jax.process_index():  # every process has the results; process 0 reports them
    return
  print(table)
  workdir = fileio.path(FLAGS.workdir)
  fileio.write_text(workdir / 'sweep.md', table + '\n')
  fileio.write_text(workdir / 'sweep.csv', sweep.to_csv(rows))


if __name__ == '__main__':
  logging.set_verbosity(logging.WARNING)  # orbax is very chatty at INFO
  cli.run(main)
