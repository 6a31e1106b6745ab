"""Stopping on SIGTERM at a step that every process agrees on.

A single process stops after the step in which it got SIGTERM. Several processes cannot
each decide alone: hosts get the signal at different steps (or only one host gets it),
so they would save different steps, or one would leave while the others wait for it in a
collective. JAX's preemption sync point decides for all of them: `jax.distributed`
installs the SIGTERM handler, the coordination service tells every process that one was
preempted, and they agree to stop at the step after the furthest any of them has reached.
Asking whether a step is that step is a lock and a comparison in the local runtime, no
communication, so the loop asks at every step.
"""
import logging
import signal
import threading

import jax
from jax.experimental import multihost_utils


class Notice:
  """`reached(step)`: whether to save `step` and exit, the same answer on every process.

  Create it just before the training loop, where steps count on from `start_step`, and
  `close()` it after the loop. With several processes, a SIGTERM that comes while a
  resumed run is still starting (before this exists) sets the stop at step 1, already
  past: that run trains on until the scheduler kills it, and the next one resumes from
  its last periodic checkpoint.
  """

  def __init__(self, start_step: int):
    self._coordinated = jax.process_count() > 1
    if self._coordinated:
      # Reports the step to the sync protocol: a SIGTERM that comes before the first
      # step of a resumed run then stops at that first step, not at step 1 (long past).
      multihost_utils.reached_preemption_sync_point(start_step)
    else:
      self._received = threading.Event()
      self._previous = signal.signal(signal.SIGTERM, lambda *_: self._received.set())

  def reached(self, step: int) -> bool:
    if self._coordinated:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._received.is_set()

  def close(self):
    # With several processes the handler is jax.distributed's: it stays.
    if not self._coordinated:
      signal.signal(signal.SIGTERM, self._previous)


def exit_saved(step: int):
  """Leaves after `step` was saved on a preemption, with SIGTERM's exit status (143)."""
  logging.warning('Preempted (SIGTERM): saved step %d, exiting; rerun the same command to '
                  'resume.', step)
  raise SystemExit(143)
