"""The command lines' own checks: list flags element by element, before any work."""
import os
import re
import subprocess
import sys

import pytest
from absl import flags

from helpers import REPO
from oracle_jax import cli

DEFAULT = '--config=' + os.path.join(REPO, 'configs', 'default.py')


def test_list_flags_parse_and_check_each_element():
  values = flags.FlagValues()
  cli.define_list('seeds', [0], 'Seeds.', int, low=0, high=cli.MAX_SEED, flag_values=values)
  cli.define_list('gammas', [], 'γ.', float, low=0, nonempty=False, flag_values=values)
  cli.define_list('kinds', 'a', 'Kinds.', choices=('a', 'b'), flag_values=values)
  values(['prog', '--seeds=3, 1', '--gammas=0,2.5', '--kinds=b,a'])
  assert (values.seeds, values.gammas, values.kinds) == ([3, 1], [0.0, 2.5], ['b', 'a'])
  bad = {'--seeds=0,x': "element 'x' is not an integer in [0, 2147483647]",
         f'--seeds={2**31}': f"element '{2**31}' is not an integer in",
         '--seeds=0,1.5': "element '1.5' is not an integer",
         '--seeds=': 'give at least one element',
         '--gammas=1,-2': "element '-2' is not a finite number >= 0",
         '--gammas=nan': "element 'nan' is not a finite number",
         '--kinds=a,c': "element 'c' is not one of a, b",
         '--kinds=a,,b': "element '' is not one of a, b"}
  for arg, message in bad.items():
    with pytest.raises(flags.IllegalFlagValueError, match=re.escape(message)):
      values(['prog', arg])


@pytest.mark.parametrize('command,message', [
    (['sweep.py', DEFAULT, '--workdir={tmp}/w', '--seeds=0,x'],
     "flag --seeds=0,x: element 'x' is not an integer in [0, 2147483647]"),
    (['sweep.py', DEFAULT, '--workdir={tmp}/w', '--gammas=1,x'],
     "flag --gammas=1,x: element 'x' is not a finite number >= 0"),
    (['sweep.py', DEFAULT, '--workdir={tmp}/w', '--methods=kd,'],
     "flag --methods=kd,: element '' is not a non-empty string"),
    (['analyze.py', DEFAULT, '--teacher=t', '--out={tmp}/o', '--gammas=0,-1'],
     "flag --gammas=0,-1: element '-1' is not a finite number >= 0"),
    (['demo.py', '--workdir={tmp}/w', '--seeds=0,x'],
     "flag --seeds=0,x: element 'x' is not an integer in [0, 2147483647]"),
    (['benchmark.py', '--kinds=kd,x'],
     "flag --kinds=kd,x: element 'x' is not one of student, kd, oracle, forward, reinforce, "
     'pipeline'),
    (['benchmark.py', 'population', '--sizes=2,0'],
     "flag --sizes=2,0: element '0' is not an integer >= 1"),
])
def test_a_bad_list_element_is_one_line(command, message, tmp_path):
  script, *args = command
  proc = subprocess.run([sys.executable, os.path.join(REPO, 'launch', script)] +
                        [a.format(tmp=tmp_path) for a in args],
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 1 and proc.stderr.strip() == f'error: {message}'
  assert not proc.stdout and not os.listdir(tmp_path)
