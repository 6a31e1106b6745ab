"""What the command lines share: an `--config` flag whose mistakes are one line, list
flags whose every element is checked as a config value is (`define_list`), and
`run(main)`, which prints a `UserError` as `error: …` (exit 1) and lets every other
exception keep its traceback.

ml_collections parses the default config file, and the `--config.key=value` overrides
with it, as soon as the flag is defined, outside any handler; so the flag is defined
without a default and `run` puts the default file on the command line instead, where
the parsing happens inside `parse_flags`.
"""
import math
import os
import re
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from oracle_jax import errors

_CONFIG_FLAG = re.compile(r'^--?config(=|$)')
_OVERRIDE_FLAG = re.compile(r'^--?(no)?config\.([^=]+)')
_DID_YOU_MEAN = re.compile(r'Did you mean "([^"]+)"')


def define_config(help_text='Experiment configuration file (path[:arg]).'):
  config_flags.DEFINE_config_file('config', None, help_text, lock_config=True)


class _ListOf(flags.ListParser):
  """A comma list whose elements are converted by `element` and checked against bounds or
  choices; a bad element is a `ValueError` naming it (absl makes it a flag error)."""

  def __init__(self, element, low, high, choices, nonempty):
    super().__init__()
    self.element, self.low, self.high = element, low, high
    self.choices, self.nonempty = choices, nonempty

  def describe(self):
    if self.choices:
      return 'one of ' + ', '.join(self.choices)
    what = {int: 'an integer', float: 'a finite number'}.get(self.element, 'a non-empty string')
    if self.low is not None and self.high is not None:
      return f'{what} in [{self.low}, {self.high}]'
    return what + (f' >= {self.low}' if self.low is not None else '') + (
        f' <= {self.high}' if self.high is not None else '')

  def parse(self, argument):
    values = [self.check(v) for v in super().parse(argument)]
    if self.nonempty and not values:
      raise ValueError(f'give at least one element, each {self.describe()}')
    return values

  def check(self, text):
    """`text` as an `element`, or a ValueError naming it."""
    try:
      value = self.element(text)
    except (TypeError, ValueError):
      value = None
    if value is None or not self.allows(value):
      raise ValueError(f'element {text!r} is not {self.describe()}')
    return value

  def allows(self, value):
    if self.choices:
      return value in self.choices
    if value == '' or (isinstance(value, float) and not math.isfinite(value)):
      return False
    return (self.low is None or value >= self.low) and (self.high is None or value <= self.high)


def define_list(name, default, help_text, element=str, *, low=None, high=None, choices=(),
                nonempty=True, flag_values=flags.FLAGS):
  """A comma-list flag of `element`s (str, int or float), each within [low, high] or among
  `choices`: `--seeds=0,x` fails in one line naming 'x', as a bad config value does."""
  parser = _ListOf(element, low, high, tuple(choices), nonempty)
  return flags.DEFINE(parser, name, default, help_text, flag_values,
                      serializer=flags.CsvListSerializer(','))


# Seeds are config values (`config.seed`): the same bounds (oracle_jax/validation.py).
MAX_SEED = 2**31 - 1


def define_processes():
  """Flags that start a multi-process run by hand (`parallel.initialize`); clusters that
  JAX detects (TPU VM slices, SLURM, …) need none."""
  flags.DEFINE_string('coordinator_address', None, 'Multi-process: HOST:PORT of process 0.')
  flags.DEFINE_integer('num_processes', None, 'Multi-process: number of processes.')
  flags.DEFINE_integer('process_id', None, 'Multi-process: this process index.')


def initialize_processes():
  """Starts the multi-process runtime per `define_processes`' flags or the cluster, and
  the compilation cache of `--config` (`config.compilation_cache_dir`)."""
  from oracle_jax import compilation_cache, parallel  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  parallel.initialize(f.coordinator_address, f.num_processes, f.process_id)
  config = f['config'].value if 'config' in f else None
  compilation_cache.enable(config.get('compilation_cache_dir') if config is not None else None)


def run(main, default_config=None):
  """`app.run(main)` with one-line user errors, flag and config mistakes included."""
  def main_with_one_line_errors(argv):
    try:
      return main(argv)
    except errors.UserError as e:
      sys.exit(f'error: {e}')
  app.run(main_with_one_line_errors,
          flags_parser=lambda argv: parse_flags(argv, default_config))


def parse_flags(argv, default_config=None):
  try:
    return flags.FLAGS(_with_config_file(list(argv), default_config))
  except errors.UserError as e:  # a missing config file
    sys.exit(f'error: {e}')
  except flags.Error as e:
    # absl re-raises a config file's ValueError (ml_collections adds its traceback); a
    # UserError or a configs/ ArgumentError in that chain is the one sentence to print.
    user_error = _innermost_user_error(e)
    if user_error is None and '\n' in str(e):  # a config file's bug: show its traceback
      raise
    sys.exit(f'error: {user_error or e}')
  except (AttributeError, KeyError) as e:  # ml_collections looking up an override's key
    chain = _chain(e)
    key = str(chain[-1].args[0]) if chain[-1].args else ''
    bad = [m.group(2) for m in map(_OVERRIDE_FLAG.match, argv[1:])
           if m and key in m.group(2).split('.')]
    if not isinstance(chain[-1], KeyError) or not bad:
      raise
    hint = next(filter(None, (_DID_YOU_MEAN.search(str(c)) for c in chain)), None)
    sys.exit(f'error: --config.{bad[0]}: the config has no key {key!r}; '
             + (f'did you mean {hint.group(1)!r}?' if hint else
                'check its spelling against the config file.'))


def _chain(e):
  """`e` and the exceptions it was raised from (or while handling), outermost first."""
  chain = []
  while e is not None and e not in chain:
    chain.append(e)
    e = e.__cause__ or e.__context__
  return chain


def _innermost_user_error(e):
  # configs/ import nothing of the library: their `file.py:arg` mistakes have their own class.
  argument_error = getattr(sys.modules.get('configs.common'), 'ArgumentError', ())
  return next((c for c in reversed(_chain(e))
               if isinstance(c, (errors.UserError, argument_error))), None)


def names_config(argv):
  """Whether the command line `argv` gives a --config (else `run` adds its default)."""
  return any(_CONFIG_FLAG.match(a) for a in argv[1:])


def _with_config_file(argv, default_config):
  """`argv` with `--config=default_config` added if absent; a missing file is a UserError."""
  given = [i for i, a in enumerate(argv) if _CONFIG_FLAG.match(a)]
  if not given and default_config:
    argv.insert(1, f'--config={default_config}')
    given = [1]
  overrides = [a for a in argv[1:] if _OVERRIDE_FLAG.match(a)]
  if overrides and not given:
    raise errors.ConfigError(f'{overrides[0]} overrides a key of the config file: pass '
                             '--config=configs/<file>.py before it.')
  for i in given:
    if '=' in argv[i]:
      value = argv[i].split('=', 1)[1]
    else:
      value = argv[i + 1] if i + 1 < len(argv) else ''
    path = value.split(':', 1)[0]
    if not os.path.isfile(path):
      raise errors.ConfigError(f'The config file {path!r} (--config={value}) does not '
                               'exist; pass a path to a configs/*.py file.')
  return argv
