"""The command lines' own checks: list flags element by element, before any work."""
import os
import re
import subprocess
import sys

import pytest
from absl import flags

from helpers import REPO
from oracle_jax import cli

SWEEP = [sys.executable, os.path.join(REPO, 'launch', 'sweep.py'),
         '--config=' + os.path.join(REPO, 'configs', 'default.py')]
ANALYZE = [sys.executable, os.path.join(REPO, 'launch', 'analyze.py'),
           '--config=' + os.path.join(REPO, 'configs', 'default.py'), '--teacher=t']


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


@pytest.mark.parametrize('command,arg,message', [
    (SWEEP, '--seeds=0,x', "flag --seeds=0,x: element 'x' is not an integer in [0, 2147483647]"),
    (SWEEP, '--gammas=1,x', "flag --gammas=1,x: element 'x' is not a finite number >= 0"),
    (SWEEP, '--methods=kd,', "flag --methods=kd,: element '' is not a non-empty string"),
    (ANALYZE, '--gammas=0,-1', "flag --gammas=0,-1: element '-1' is not a finite number >= 0"),
])
def test_a_bad_list_element_is_one_line(command, arg, message, tmp_path):
  where = f'--out={tmp_path / "o"}' if command is ANALYZE else f'--workdir={tmp_path / "w"}'
  proc = subprocess.run(command + [where, arg], capture_output=True, text=True, timeout=120)
  assert proc.returncode == 1 and proc.stderr.strip() == f'error: {message}'
  assert not proc.stdout and not os.listdir(tmp_path)
