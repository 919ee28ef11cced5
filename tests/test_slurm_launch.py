"""scripts/slurm/train.sbatch run as SLURM runs it: one job step of 2 tasks on this machine.

`srun` is a shim on PATH that starts the step's tasks with the variables srun gives each task
(SLURM_PROCID, SLURM_LOCALID, SLURM_STEP_NODELIST, ...); the batch script itself gets the ones
sbatch sets. Each task runs a stand-in for `python -m feadapter_jax.main` that takes the same
flags and starts the same way (`cli.start`), so `jax.distributed.initialize()` finds the
processes through JAX's own SLURM detection (no coordinator flags), with gloo collectives on
CPU; then it gathers the process indices, which needs the collectives to work. The training
itself on 2 processes is tests/test_multihost.py's.
"""

import json
import os
import random
import signal
import socket
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, 'scripts', 'slurm', 'train.sbatch')

# srun for tests: skips srun's options (the script gives them as --opt=value), records them and
# the command, swaps `python -m feadapter_jax.main` for the stand-in, and starts SLURM_NTASKS
# copies on this one node, each with its task's variables and its own output file.
SRUN_SHIM = r"""#!/bin/bash
opts=()
while [[ $# -gt 0 && $1 == -* ]]; do opts+=("$1"); shift; done
echo "${opts[@]}" > "$SRUN_LOG_DIR/srun_options"
printf '%s\n' "$@" > "$SRUN_LOG_DIR/srun_command"
if [[ $1 == python && $2 == -m && $3 == feadapter_jax.main ]]; then
  set -- python "$SRUN_LOG_DIR/main_stand_in.py" "${@:4}"
fi
n=${SLURM_NTASKS:?}
pids=()
for ((i = 0; i < n; i++)); do
  SLURM_PROCID=$i SLURM_LOCALID=$i SLURM_NODEID=0 SLURM_STEP_ID=0 SLURM_STEPID=0 \
    SLURM_STEP_NODELIST=$SLURM_JOB_NODELIST SLURM_STEP_NUM_NODES=$SLURM_NNODES \
    SLURM_STEP_NUM_TASKS=$n SLURM_STEP_TASKS_PER_NODE=$n \
    "$@" > "$SRUN_LOG_DIR/task$i.out" 2>&1 &
  pids+=($!)
done
rc=0
for pid in "${pids[@]}"; do wait "$pid" || rc=$?; done
exit $rc
"""

# `python -m feadapter_jax.main` up to its training: the flags, `cli.start`, then a collective.
MAIN_STAND_IN = """
import json
import os
import sys

sys.path.insert(0, os.getcwd())  # as `python -m` does

from absl import app
from absl import flags

from feadapter_jax import cli

_CONFIG = cli.define_config('config')
flags.DEFINE_string('workdir', None, '')


def main(argv):
  del argv
  cli.start(_CONFIG.value)
  import jax
  from jax._src import distributed
  from jax.experimental import multihost_utils

  gathered = multihost_utils.process_allgather(jax.numpy.array(jax.process_index()))
  print(json.dumps(dict(
      process_index=jax.process_index(),
      process_count=jax.process_count(),
      device_count=jax.device_count(),
      gathered=[int(i) for i in gathered],
      coordinator=distributed.global_state.coordinator_address,
  )))


app.run(main)
"""

# JAX's SLURM detection puts the coordinator on port 61440 + SLURM_JOB_ID % 4096.
JAX_SLURM_PORTS = (65536 - 4096, 65536)


def free_slurm_port() -> int:
  for port in random.sample(range(*JAX_SLURM_PORTS), 50):
    with socket.socket() as s:
      try:
        s.bind(('localhost', port))
      except OSError:
        continue
      return port
  pytest.skip(f'no free port in {JAX_SLURM_PORTS}')


def venv_dir(tmp_path) -> str:
  """The venv running the tests, or a stand-in whose activate puts this Python first on PATH."""
  if os.path.isfile(os.path.join(sys.prefix, 'bin', 'activate')):
    return sys.prefix
  bin_dir = tmp_path / 'venv' / 'bin'
  bin_dir.mkdir(parents=True)
  (bin_dir / 'python').write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
  (bin_dir / 'python').chmod(0o755)
  (bin_dir / 'activate').write_text(f'export PATH="{bin_dir}:$PATH"\n')
  return str(tmp_path / 'venv')


def batch_env(tmp_path, **slurm):
  """The environment sbatch gives the batch script, with the srun shim first on PATH."""
  shim_dir = tmp_path / 'shim'
  shim_dir.mkdir()
  (shim_dir / 'srun').write_text(SRUN_SHIM)
  (shim_dir / 'srun').chmod(0o755)
  (tmp_path / 'main_stand_in.py').write_text(MAIN_STAND_IN)
  env = {
      k: v
      for k, v in os.environ.items()
      if not k.startswith(('SLURM_', 'OMPI_', 'PMI', 'JAX_COORDINATOR', 'JAX_LOCAL_DEVICE'))
  }
  env.pop('XLA_FLAGS', None)
  env.update(
      PATH=f'{shim_dir}:{env.get("PATH", "/usr/bin:/bin")}',
      JAX_PLATFORMS='cpu',
      VENV=venv_dir(tmp_path),
      SRUN_LOG_DIR=str(tmp_path),
      SLURM_SUBMIT_DIR=ROOT,
      SLURM_JOB_NAME='feadapter',
      SLURM_JOB_NODELIST='localhost',
      SLURM_NNODES='1',
      **slurm,
  )
  return env


def run_script(args, env, timeout):
  proc = subprocess.Popen(
      ['bash', SCRIPT, *args],
      cwd=env['SRUN_LOG_DIR'],  # the script goes to SLURM_SUBMIT_DIR itself
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
      start_new_session=True,
  )
  try:
    out, _ = proc.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    os.killpg(proc.pid, signal.SIGKILL)
    out, _ = proc.communicate()
    pytest.fail(f'train.sbatch ran past {timeout} s:\n{out[-3000:]}')
  return proc.returncode, out


def read(path) -> str:
  with open(path) as f:
    return f.read()


@pytest.mark.slow
def test_sbatch_script_starts_two_processes_through_jax_slurm_detection(tmp_path):
  port = free_slurm_port()
  env = batch_env(
      tmp_path,
      SLURM_JOB_ID=str(port - JAX_SLURM_PORTS[0] + 4096 * 7),
      SLURM_NTASKS='2',
      SLURM_NTASKS_PER_NODE='2',
  )
  config = 'configs/synthetic.py:quick,init='
  overrides = [f'--config.data.data_dir={tmp_path / "tfds"}', '--config.total_steps=4']
  rc, out = run_script([config, 'workdirs/slurm_run', *overrides], env, timeout=240)
  tasks = [read(tmp_path / f'task{i}.out') for i in range(2)]
  assert rc == 0, out[-2000:] + '\n'.join(t[-3000:] for t in tasks)
  # The data step ran once, as one process, before srun.
  assert out.count('is prepared in') == 1 and (tmp_path / 'tfds' / 'synth_fer').is_dir()
  assert read(tmp_path / 'srun_options').split() == ['--kill-on-bad-exit=1', '--gpu-bind=none']
  assert read(tmp_path / 'srun_command').splitlines() == [
      'python',
      '-m',
      'feadapter_jax.main',
      f'--config={config}',
      '--workdir=workdirs/slurm_run',
      '--config.distributed.initialize=True',
      *overrides,
  ]
  for i, log in enumerate(tasks):
    result = json.loads(log.strip().splitlines()[-1])
    assert result == dict(
        process_index=i,
        process_count=2,
        device_count=2,
        gathered=[0, 1],
        coordinator=f'localhost:{port}',  # the first host, the port from SLURM_JOB_ID
    ), log[-3000:]


def test_sbatch_script_refuses_more_gpus_than_tasks_per_node(tmp_path):
  env = batch_env(
      tmp_path,
      SLURM_JOB_ID='1',
      SLURM_NTASKS='1',
      SLURM_NTASKS_PER_NODE='1',
      SLURM_GPUS_ON_NODE='8',
  )
  rc, out = run_script(['configs/synthetic.py:quick', str(tmp_path / 'run')], env, timeout=60)
  assert rc == 2 and 'one task per GPU' in out
  assert not os.path.exists(tmp_path / 'srun_options')
