"""Two trainer processes on one machine (tests/test_multihost.py's recipe): killing one makes the
other exit with JAX's error within a bounded time instead of hanging, and restarting both resumes
them from the last checkpoint to the end."""

import json
import os
import time

from tests import test_multihost
from tests import test_train
from tests.reliability import harness

HEARTBEAT_S = 10
# The survivor fails its next collective at once, then waits at most a heartbeat timeout for the
# shutdown barrier; the rest is slack for a loaded machine.
EXIT_BOUND_S = HEARTBEAT_S + 25
TOTAL_STEPS = 8


def _launch_pair(workdir, data_dir) -> list[harness.Trainer]:
  args = test_train.command(
      str(workdir),
      data_dir,
      harness.CONFIG,
      f'--config.total_steps={TOTAL_STEPS}',
      '--config.log_every_steps=1',
      '--config.checkpoint_every_steps=2',
      '--config.eval_every_steps=1000',
      '--config.distributed.initialize=True',
      f'--config.distributed.coordinator_address=localhost:{test_multihost.free_port()}',
      '--config.distributed.num_processes=2',
      f'--config.distributed.heartbeat_timeout_seconds={HEARTBEAT_S}',
  )
  return [harness.Trainer([*args, f'--config.distributed.process_id={i}']) for i in range(2)]


def test_a_killed_process_stops_the_other_and_a_restart_resumes_both(tmp_path, data_dir):
  workdir = tmp_path / 'run'
  ckpt_dir = workdir / 'checkpoints'
  chief, other = _launch_pair(workdir, data_dir)
  assert chief.wait_until(lambda: chief.reached(3) and harness.complete_steps(ckpt_dir))
  other.proc.kill()
  killed_at = time.monotonic()
  rc = chief.finish(timeout=EXIT_BOUND_S + 60)
  waited = time.monotonic() - killed_at
  other.finish()
  assert rc != 0 and waited < EXIT_BOUND_S, (rc, waited, chief.output[-3000:])
  assert 'another task died' in chief.output, chief.output[-3000:]
  last = harness.assert_checkpoints_intact(ckpt_dir)[-1]

  restarted = _launch_pair(workdir, data_dir)
  for run in restarted:
    assert run.finish() == 0, run.output[-3000:]
  assert f'Resumed from step {last}\n' in restarted[0].output
  with open(os.path.join(workdir, 'results.json')) as f:
    assert json.load(f)['step'] == TOTAL_STEPS
