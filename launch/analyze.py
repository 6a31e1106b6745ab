r"""The paper's Section 4.1 analyses of a teacher, as a report: tables, figures, γ choice.

    python launch/analyze.py --config=configs/<file>.py --teacher=<orbax dir | .pth> \
        [--gammas=0,0.1,0.2,0.5,1,2,5] [--split=test] [--out=DIR] [--select_gamma]

Writes report.md, report.json and PNG figures into --out (default: `analysis/` beside
the teacher). With --select_gamma it also prints the silhouette-best γ as a config
override line for launch/main.py and writes it to gamma_override.txt.
"""
import os
import sys

# Runnable from a checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import logging  # pylint: disable=g-import-not-at-top,wrong-import-position

from oracle_jax import cli, errors  # pylint: disable=g-import-not-at-top,wrong-import-position

cli.define_config()
_TEACHER = flags.DEFINE_string(
    'teacher', None, 'Orbax model checkpoint dir, run workdir or .pth file; overrides '
    'teacher.checkpoint of the config.')
_GAMMAS = cli.define_list('gammas', '0,0.1,0.2,0.5,1,2,5', 'Comma-separated γ values of the '
                          'sweep.', float, low=0)
_SPLIT = flags.DEFINE_string('split', None, "Split to analyse ('test', 'train', …); "
                             "default: the dataset's eval split.")
_OUT = flags.DEFINE_string('out', None, 'Output directory; default: analysis/ beside '
                           'the teacher.')
_NUM_BINS = flags.DEFINE_integer('num_bins', 15, 'Equal-width confidence bins of ECE.')
_TEMPERATURE = flags.DEFINE_float('temperature', None, 'τ of the entropy, silhouette and '
                                  't-SNE outputs softmax(logits/τ); default: the config\'s.')
_TSNE_EXAMPLES = flags.DEFINE_integer('tsne_examples', 1000, 'Examples in each t-SNE.')
_SILHOUETTE_EXAMPLES = flags.DEFINE_integer('silhouette_examples', 2000,
                                            'Examples in each silhouette score.')
_SELECT_GAMMA = flags.DEFINE_bool('select_gamma', False, 'Print and write the '
                                  'silhouette-best γ as a --config.oracle.gamma override.')
_MAX_EXAMPLES = flags.DEFINE_integer('max_examples', 0, '> 0: analyse only the first '
                                     'this many examples of the split.')
cli.define_processes()


def default_out_dir(teacher):
  """analysis/ beside the teacher: next to a .pth, in a run's workdir (never inside an
  orbax checkpoint directory)."""
  from oracle_jax import fileio  # pylint: disable=g-import-not-at-top
  teacher = fileio.path(teacher)
  if teacher.is_file() or not (teacher / 'teacher').is_dir():
    return teacher.parent / 'analysis'
  return teacher / 'analysis'


def main(argv):
  if len(argv) > 1:
    raise errors.UserError(f'Unexpected arguments: {argv[1:]}')
  # Imported here so that --help is instant and flags parse before JAX starts.
  import jax  # pylint: disable=g-import-not-at-top
  from oracle_jax import analysis, fileio  # pylint: disable=g-import-not-at-top
  cli.initialize_processes()
  config = flags.FLAGS.config
  if config is None:
    raise errors.UserError('--config is required, e.g. --config=configs/default.py.')
  teacher = _TEACHER.value or config.teacher.checkpoint
  if not teacher:
    raise errors.UserError('Give --teacher (or set teacher.checkpoint in the config).')
  out_dir = _OUT.value or default_out_dir(teacher)
  report = analysis.run(
      config, teacher=teacher, out_dir=out_dir, gammas=_GAMMAS.value, split=_SPLIT.value,
      num_bins=_NUM_BINS.value, temperature=_TEMPERATURE.value,
      tsne_examples=_TSNE_EXAMPLES.value, silhouette_examples=_SILHOUETTE_EXAMPLES.value,
      max_examples=_MAX_EXAMPLES.value)
  if jax.process_index() == 0:  # Every process computes the report; one writes it.
    print(f'Wrote the report to {out_dir}')
    if _SELECT_GAMMA.value:
      line = analysis.override_line(report['selected'])
      fileio.write_text(fileio.path(out_dir) / 'gamma_override.txt', line + '\n')
      print(line)


if __name__ == '__main__':
  logging.set_verbosity(logging.WARNING)  # orbax is very chatty at INFO
  cli.run(main)
