"""The .pth reader under fuzzing (`pth_fuzz`): a CI-sized run with a fixed seed, in its own
process so its memory limit (RLIMIT_AS) binds only the reader. Release checks run more
examples: `python tests/pth_fuzz.py --examples=20000 --seed=1`."""
import os
import re
import subprocess
import sys

FUZZ = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'pth_fuzz.py')


def test_fuzzed_checkpoints_read_or_raise_the_readers_error_in_bounds():
  done = subprocess.run([sys.executable, FUZZ, '--examples=600', '--seed=0',
                         '--memory_mib=3072'], capture_output=True, text=True, timeout=300,
                        check=False, env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
  summary = done.stdout.strip().splitlines()[-1]
  counts = {k: int(n) for n, k in re.findall(r'(\d+) (\w+)', summary.split(': ', 1)[1])}
  # Both outcomes occur: the genuine seeds and some mutants read, most inputs are refused.
  assert counts.get('read', 0) >= 7 and counts.get('MalformedCheckpointError', 0) >= 300, summary
  assert counts.get('UnsafeCheckpointError', 0) >= 1, summary
