"""Kept for the documented commands: `python launch/benchmark.py [population] FLAGS…` runs
benchmarks/steps.py FLAGS… (benchmarks/population.py FLAGS… after `population`)."""
import os
import runpy
import sys

_NAME = 'population' if sys.argv[1:2] == ['population'] else 'steps'
sys.argv[1:] = sys.argv[2 if _NAME == 'population' else 1:]
runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'benchmarks',
                            f'{_NAME}.py'), run_name='__main__')
