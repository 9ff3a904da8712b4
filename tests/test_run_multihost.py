"""One run across two hosts: 2 local processes with 4 CPU devices each form one 8-device mesh
(jax.distributed, gloo collectives) and must end where one process with 8 devices ends, also when
one process is SIGKILLed mid-run and both restart.

Not bit-identical to one process: gloo adds the devices' partial sums (the loss over the batch,
the gradients over FSDP shards) in another order than XLA's in-process collectives, so values
differ in the last bits (about 1e-7 relative). The fine-tune's steps after its best one are the
unstable ones (its dev loss rises, which stops it): there Adam, which divides each gradient by its
own scale, grows those differences to about 1e-5 within five steps (measured 9.5e-6 and 1.4e-5 in
the grad norm at step 15 with XLA's two CPU code generators). What is kept, the best step's
parameters and the metrics computed from them, comes from the stable steps.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import tiny_study

from launch import local
from scaling import grid, kinds
from scaling import run as run_lib
from scaling import study as study_lib

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 1e-5  # Relative, on metrics and parameters after 30 pretraining and up to 20 fine-tuning steps.
TOL_AFTER_BEST = 1e-4  # Relative, on the fine-tune's training records after its best step (see above).


def _plan(workdir) -> list[grid.Run]:
  """A pretrain (long enough to be killed mid-way) and a fine-tune that stops early, on a
  (fsdp 4 x tensor 2) mesh."""
  study = study_lib.validate(
    tiny_study(
      **{
        "mesh.shape": {"data": 1, "fsdp": 4, "tensor": 2},
        "pretrain.steps": (30,),  # Killed after its step-10 checkpoint, with 15 steps still to go.
        "finetune.d_f": (16,),
        "finetune.train.learning_rate": 0.01,
        "finetune.train.patience": 1,
        "finetune.train.checkpoint_every": 20,  # Only where it stops: it is not killed.
      }
    ),
    8,
  )
  runs = kinds.expand(study)
  local.write_plan(study, runs, workdir)
  return runs


def _spec(workdir, run) -> str:
  return str(workdir / "runs" / run.id / "spec.json")


def _env(devices: int) -> dict:
  flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip()
  return {**os.environ, "PYTHONPATH": ROOT, "XLA_FLAGS": flags}


def _one_process(workdir, run) -> None:
  run_lib.execute(run, workdir)  # This test process has 8 CPU devices (conftest).


def _start_two(workdir, run) -> list[subprocess.Popen]:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  return [
    subprocess.Popen(
      [
        sys.executable,
        "-m",
        "scaling.run",
        "--spec",
        _spec(workdir, run),
        "--coordinator",
        f"127.0.0.1:{port}",
        "--num-processes",
        "2",
        "--process-id",
        str(i),
      ],
      cwd=ROOT,
      env=_env(4),
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]


def _two_processes(workdir, run) -> None:
  procs = _start_two(workdir, run)
  for p in procs:
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-3000:]


def _metrics(workdir, run) -> list[dict]:
  return [json.loads(line) for line in (workdir / "runs" / run.id / "metrics.jsonl").read_text().splitlines()]


def _params(workdir, run) -> list[np.ndarray]:
  path = workdir / "runs" / run.id / "model"
  checkpointer = ocp.StandardCheckpointer()
  meta = checkpointer.metadata(path)
  meta = getattr(meta, "item_metadata", meta)
  one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return [
    np.asarray(x)
    for x in jax.tree.leaves(
      checkpointer.restore(path, jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one), meta))
    )
  ]


def _result(workdir, run) -> dict:
  return json.loads((workdir / "runs" / run.id / "result.json").read_text())


def _killed_mid_run(workdir, run) -> list[int]:
  """Starts the run on two processes, SIGKILLs one after its step-10 checkpoint and then the other;
  returns the checkpointed steps left behind."""
  procs = _start_two(workdir, run)
  log = workdir / "runs" / run.id / "metrics.jsonl"
  deadline = time.time() + 240
  while time.time() < deadline and not (
    log.exists() and any(json.loads(line)["step"] >= 15 for line in log.read_text().splitlines() if line)
  ):
    assert procs[0].poll() is None, procs[0].communicate()[1][-3000:]
    time.sleep(0.005)
  procs[1].send_signal(signal.SIGKILL)  # One host dies mid-run ...
  procs[0].send_signal(signal.SIGKILL)  # ... and the orchestrator stops the rest of the slice.
  for p in procs:
    p.communicate()
  assert not (workdir / "runs" / run.id / "result.json").exists()
  return [int(d.name) for d in (workdir / "runs" / run.id / "ckpt").iterdir() if d.name.isdigit()]


@pytest.fixture(scope="module")
def two_host_runs(tmp_path_factory):
  """The same plan run by this 8-device process and by two 4-device processes, whose pretrain is
  killed mid-way and restarted."""
  one, two = tmp_path_factory.mktemp("one"), tmp_path_factory.mktemp("two")
  runs = _plan(one)[:2]  # The pretrain, then its fine-tune.
  assert _plan(two)[:2] == runs and [r.kind for r in runs] == ["pretrain", "finetune"]
  for run in runs:
    _one_process(one, run)
  saved = _killed_mid_run(two, runs[0])
  for run in runs:
    _two_processes(two, run)  # The pretrain resumes from its last checkpoint.
  return one, two, runs, saved


def test_two_processes_end_where_one_process_ends(two_host_runs):
  one, two, runs, _ = two_host_runs
  for run in runs:
    a, b = _metrics(one, run), _metrics(two, run)
    assert [sorted(r) for r in a] == [sorted(r) for r in b] and len(a) >= 4
    best = _result(one, run)["train"]["best_step"]
    for ra, rb in zip(a, b):
      for key in ra:
        tol = TOL if ra["step"] <= best else TOL_AFTER_BEST
        assert rb[key] == pytest.approx(ra[key], rel=tol), (run.kind, ra["step"], key)
    for x, y in zip(_params(one, run), _params(two, run), strict=True):
      np.testing.assert_allclose(y, x, rtol=TOL, atol=TOL)
    ra, rb = _result(one, run), _result(two, run)
    assert ra["train"]["steps"] == rb["train"]["steps"] and ra["train"]["best_step"] == rb["train"]["best_step"]
    assert set(ra["metrics"]) == set(rb["metrics"])
    for key, value in ra["metrics"].items():
      assert rb["metrics"][key] == pytest.approx(value, rel=TOL, abs=TOL), (run.kind, key)
  assert _result(two, runs[1])["train"]["steps"] < 20  # Early stopping fired, and both hosts agreed on it.


def test_sigkilled_run_resumed_from_its_checkpoint(two_host_runs):
  _, two, runs, saved = two_host_runs
  assert saved and 10 <= max(saved) < 30  # Killed between checkpoints, after the one it resumed from.
  steps = [r["step"] for r in _metrics(two, runs[0])]
  assert steps == sorted(set(steps)) and steps[-1] == 30  # Logged once each: cut back, then continued.
