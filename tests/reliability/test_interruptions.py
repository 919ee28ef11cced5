"""A training run stopped again and again at seeded random moments (SIGKILL mid-step, SIGKILL while
a checkpoint is being written, SIGTERM, SIGKILL after the final checkpoint) and rerun each time:
every rerun resumes from the newest complete checkpoint, every checkpoint left on disk restores
intact, and the final parameters equal an uninterrupted run's bitwise (tests/test_train.py has
the single-kill and single-SIGTERM cases)."""

import os
import random
import re
import signal
import time

from tests.reliability import harness

FAULT_SEED = 0
# A save at every step, asynchronous as in real runs: writes overlap the next steps.
SAVE_EVERY_STEP = ['--config.checkpoint_every_steps=1', '--config.checkpoint_async=True']
ATTEMPTS_TO_HIT_A_SAVE = 3


def _step_of(partial_name: str) -> int:
  return int(partial_name.split('.')[0])


def test_random_kills_and_preemption_resume_to_the_uninterrupted_parameters(
    tmp_path, data_dir, reference
):
  rng = random.Random(FAULT_SEED)
  # Early enough that every fault still finds steps to interrupt before step 12.
  kill_step, save_step, term_step = sorted(rng.sample(range(2, 8), 3))
  workdir = tmp_path / 'run'
  ckpt_dir = workdir / 'checkpoints'
  history = []  # what each launch went through, for failure messages

  def launch() -> tuple[harness.Trainer, list[int], list[str]]:
    complete, partial = harness.assert_checkpoints_intact(ckpt_dir), harness.partial_steps(ckpt_dir)
    return harness.trainer(workdir, data_dir, *harness.STEPS, *SAVE_EVERY_STEP), complete, partial

  def stopped(
      run: harness.Trainer,
      complete: list[int],
      partial: list[str],
      fault: str,
      expected_rc: int = -signal.SIGKILL,
  ) -> None:
    rc = run.finish()
    history.append(
        f'{fault}: resumed from {complete[-1] if complete else None}, rc {rc}, '
        f'left {harness.complete_steps(ckpt_dir)} + partial '
        f'{harness.partial_steps(ckpt_dir)}'
    )
    assert rc == expected_rc, (history, run.output[-3000:])
    # Partial steps are ignored (and reported), complete ones never.
    resumed = f'Resumed from step {complete[-1]}\n' if complete else 'Resumed from step'
    assert (resumed in run.output) == bool(complete), (history, run.output[-3000:])
    if partial:
      assert 'partially written' in run.output and all(p in run.output for p in partial)

  # 1. SIGKILL at a random moment of the steps after `kill_step`.
  run, complete, partial = launch()
  assert run.wait_until(lambda: run.reached(kill_step))
  time.sleep(rng.uniform(0.0, 0.1))
  run.proc.kill()
  stopped(run, complete, partial, f'SIGKILL after step {kill_step}')

  # 2. SIGKILL while a checkpoint of step >= `save_step` is being written (retried if the write
  #    completed between the look and the kill).
  for attempt in range(ATTEMPTS_TO_HIT_A_SAVE):
    run, complete, partial = launch()
    assert run.wait_until(
        lambda: any(_step_of(p) >= save_step for p in harness.partial_steps(ckpt_dir))
    )
    run.proc.kill()
    stopped(run, complete, partial, f'SIGKILL during a save (attempt {attempt + 1})')
    if harness.partial_steps(ckpt_dir):
      break
  assert harness.partial_steps(ckpt_dir), history

  # 3. SIGTERM (preemption) at a random moment after `term_step`: a checkpoint at the current
  #    step and exit code 0; the next run resumes exactly there.
  run, complete, partial = launch()
  assert run.wait_until(lambda: run.reached(term_step))
  time.sleep(rng.uniform(0.0, 0.02))
  run.proc.send_signal(signal.SIGTERM)
  stopped(run, complete, partial, f'SIGTERM after step {term_step}', expected_rc=0)
  preempted = re.search(r'Preempted \(SIGTERM\): checkpoint at step (\d+)', run.output)
  assert preempted, run.output[-3000:]
  assert harness.complete_steps(ckpt_dir)[-1] == int(preempted.group(1))

  # 4. SIGKILL once the final checkpoint is complete, before or while exporting.
  run, complete, partial = launch()
  final = ckpt_dir / str(harness.TOTAL_STEPS)
  assert run.wait_until(lambda: os.path.isdir(final))
  run.proc.kill()
  stopped(run, complete, partial, 'SIGKILL after the final checkpoint')

  # 5. The last rerun finishes from the final checkpoint without training or saving it again.
  run, complete, partial = launch()
  stopped(run, complete, partial, 'completion', expected_rc=0)
  assert (
      complete[-1] == harness.TOTAL_STEPS and 'Results (final step, test): UAR' in run.output
  ), history
  harness.assert_same_params(workdir, reference)
  assert harness.assert_checkpoints_intact(ckpt_dir)[-1] == harness.TOTAL_STEPS
