"""The training loop: resume after a kill equals an uninterrupted run; early stopping and the cap."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import tiny_study
from test_metric_writers import assert_events_match_metrics

from launch import local
from scaling import kinds, results
from scaling import run as run_lib
from scaling import study as study_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The fine-tune is a LoRA run: its resume restores adapters and their moments, not base weights. Each
# run is killed after its first checkpoint (step 10) with 50 steps still to go.
STEPS = 60
LONG = {
  "pretrain.steps": (STEPS,),
  "pretrain.train.checkpoint_every": 10,
  "finetune.d_f": (32,),
  "finetune.methods": ({"name": "lora", "rank": 4},),
  "finetune.train.max_steps": STEPS,
  "finetune.train.patience": 1000,
  "finetune.train.checkpoint_every": 10,
}


def _plan(workdir, **overrides):
  study = study_lib.validate(tiny_study(**{**LONG, **overrides}), 8)
  runs = kinds.expand(study)
  local.write_plan(study, runs, workdir)
  return {r.kind: r for r in runs}


def _command(workdir, run):
  return [sys.executable, "-m", "scaling.run", "--spec", str(workdir / "runs" / run.id / "spec.json")]


def _env():
  # As many CPU devices as this process has (conftest): the same XLA programs, the same numbers.
  return {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), "JAX_NUM_CPU_DEVICES": "8"}


def _run_and_kill_after_first_checkpoint(workdir, run) -> int:
  """The step of the checkpoint that the killed run left."""
  ckpt = workdir / "runs" / run.id / "ckpt"
  proc = subprocess.Popen(
    _command(workdir, run), env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
  )
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    if ckpt.exists() and any(p.name.isdigit() for p in ckpt.iterdir()):
      break
    time.sleep(0.01)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  steps = [int(p.name) for p in ckpt.iterdir() if p.name.isdigit()]
  assert steps and max(steps) < STEPS, "the run must be killed after a checkpoint and before its end"
  assert results.read_result(workdir / "runs" / run.id) is None
  return max(steps)


@pytest.fixture(scope="module")
def execute_base(tmp_path_factory):
  """run_lib.execute for the pretraining runs that several tests fine-tune from: each trains once, in the
  first workdir that needs it, and is copied into the others (a finished run is not run again)."""
  trained = {}

  def execute(run, workdir):
    assert run.kind == "pretrain"
    if run.id in trained:
      shutil.copytree(trained[run.id], workdir / "runs" / run.id, dirs_exist_ok=True)
    record = run_lib.execute(run, workdir)
    if run.id not in trained:
      trained[run.id] = tmp_path_factory.mktemp("base") / run.id
      shutil.copytree(workdir / "runs" / run.id, trained[run.id])
    return record

  return execute


def _params(workdir, run):
  return ocp.StandardCheckpointer().restore(str(workdir / "runs" / run.id / "model"))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["pretrain", "finetune"])
def test_killed_run_resumes_to_the_same_end(tmp_path, kind, capsys, execute_base):
  straight, killed = tmp_path / "straight", tmp_path / "killed"
  runs = _plan(straight)
  assert _plan(killed) == runs
  if kind == "finetune":  # Both copies share one base.
    execute_base(runs["pretrain"], straight)
    shutil.copytree(straight / "runs" / runs["pretrain"].id, killed / "runs" / runs["pretrain"].id, dirs_exist_ok=True)
  run = runs[kind]
  (execute_base if kind == "pretrain" else run_lib.execute)(run, straight)  # In this process: as a run's own.
  saved = _run_and_kill_after_first_checkpoint(killed, run)
  assert "resuming" not in capsys.readouterr().out
  run_lib.execute(run, killed)
  assert [line for line in capsys.readouterr().out.splitlines() if "resuming" in line] == [
    f"resuming {run.id} from step {saved}"
  ]

  a, b = (results.read_result(w / "runs" / run.id) for w in (straight, killed))
  assert a["metrics"] == b["metrics"]
  assert {k: v for k, v in a["train"].items() if "seconds" not in k} == {
    k: v for k, v in b["train"].items() if "seconds" not in k
  }
  lines = [(w / "runs" / run.id / "metrics.jsonl").read_text().splitlines() for w in (straight, killed)]
  assert lines[0] == lines[1] and len(lines[0]) >= 10
  for w in (straight, killed):  # The event files too: the killed run's steps after its checkpoint once.
    assert_events_match_metrics(w / "runs" / run.id)
  for x, y in zip(*(jax_leaves(_params(w, run)) for w in (straight, killed))):
    np.testing.assert_array_equal(x, y)


def jax_leaves(tree):
  import jax

  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _execute_tiny(tmp_path, execute_base, **overrides):
  study = study_lib.validate(tiny_study(**overrides), 8)
  runs = kinds.expand(study)
  local.write_plan(study, runs, tmp_path)
  return [execute_base(runs[0], tmp_path)] + [run_lib.execute(r, tmp_path) for r in runs[1:]]


@pytest.mark.slow
def test_early_stopping_keeps_best_dev_step(tmp_path, execute_base):
  # A huge learning rate makes dev loss worse after the first steps: training stops early.
  records = _execute_tiny(
    tmp_path,
    execute_base,
    **{
      "finetune.d_f": (32,),
      "finetune.train.learning_rate": 0.3,
      "finetune.train.max_steps": 200,
      "finetune.train.patience": 2,
    },
  )
  ft = records[-1]["train"]
  assert not ft["hit_step_cap"] and ft["steps"] < 200
  assert ft["steps"] == ft["best_step"] + 2 * 5  # Two evaluations (every 5 steps) without gain.
  dev = [
    json.loads(line) for line in open(tmp_path / "runs" / records[-1]["id"] / "metrics.jsonl") if "dev_loss" in line
  ]
  assert ft["best_dev_loss"] == pytest.approx(min(d["dev_loss"] for d in dev), rel=1e-6)
  assert [r["train"]["compute_dtype"] for r in records] == ["float32", "float32"]  # What auto means on a CPU.


@pytest.mark.slow
def test_step_cap_is_recorded(tmp_path, execute_base):
  records = _execute_tiny(
    tmp_path,
    execute_base,
    **{
      "finetune.d_f": (32,),
      "finetune.train.learning_rate": 1e-3,
      "finetune.train.max_steps": 10,
      "finetune.train.patience": 100,
    },
  )
  ft = records[-1]["train"]
  assert ft["hit_step_cap"] and ft["steps"] == 10


@pytest.mark.slow
@pytest.mark.parametrize("packed", [False, True])
def test_a_run_killed_before_its_first_checkpoint_logs_each_line_once(tmp_path, packed, execute_base):
  """A fine-tune logs its dev loss at step 0, before any checkpoint: a kill then leaves only metric
  lines (the last perhaps half-written), and the rerun starts afresh and writes each line once."""
  study = study_lib.validate(tiny_study(**{"finetune.train.checkpoint_every": 100, "finetune.pack": 2}), 8)
  runs = kinds.expand(study)
  local.write_plan(study, runs, tmp_path)
  execute_base(runs[0], tmp_path)
  finetunes = runs[1:] if packed else runs[1:2]
  run_lib.execute_pack(finetunes, tmp_path)
  dirs = [tmp_path / "runs" / r.id for r in finetunes]
  straight = [(d / "metrics.jsonl").read_text() for d in dirs]
  assert all(text.startswith('{"dev_loss"') and '"step": 0}' in text.splitlines()[0] for text in straight)
  for d, text in zip(dirs, straight):  # As a kill at step 7 leaves the run: no checkpoint, no result.
    for name in ("ckpt", "model", results.RESULT):
      shutil.rmtree(d / name) if (d / name).is_dir() else (d / name).unlink()
    lines = [line for line in text.splitlines() if json.loads(line)["step"] <= 7]
    (d / "metrics.jsonl").write_text("\n".join(lines) + '\n{"loss": 2.5, "st')
  run_lib.execute_pack(finetunes, tmp_path)
  assert [(d / "metrics.jsonl").read_text() for d in dirs] == straight
  for d in dirs:
    assert_events_match_metrics(d)


@pytest.mark.slow
@pytest.mark.parametrize("pack", [1, 2])
def test_the_last_step_is_evaluated_where_the_cap_is_off_the_cadence(tmp_path, pack, execute_base):
  """Steps 21 to 23 of a 23-step fine-tune are not trained for nothing: the cap is a dev evaluation."""
  study = study_lib.validate(
    tiny_study(**{"finetune.train.max_steps": 23, "finetune.train.patience": 100, "finetune.pack": pack}), 8
  )
  runs = kinds.expand(study)
  local.write_plan(study, runs, tmp_path)
  execute_base(runs[0], tmp_path)
  for r, record in zip(runs[1:], run_lib.execute_pack(runs[1:], tmp_path)):
    lines = [json.loads(line) for line in open(tmp_path / "runs" / r.id / "metrics.jsonl")]
    assert [rec["step"] for rec in lines if "dev_loss" in rec] == [0, 5, 10, 15, 20, 23]
    assert record["train"]["steps"] == 23 and record["train"]["hit_step_cap"]


class _Checkpoints:
  """A checkpoint manager's part that `train.loop` uses, recording the steps saved."""

  def __init__(self, latest=None):
    self.saved, self.latest = [], latest

  def latest_step(self):
    return self.latest

  def save(self, step, args, force):
    del args, force
    self.saved.append(step)

  def wait_until_finished(self):
    pass

  def close(self):
    pass


def _lanes_loop(tmp_path, lanes, start_K, bad_evals_K):
  """`train.loop` over `lanes` (indices of scripted lanes) with stub steps; returns (steps, stopped,
  best steps, saved steps, metrics.jsonl lines) per lane."""
  from etils import epath

  from scaling import train

  cfg = train.TrainConfig(max_steps=23, log_every=5, eval_every=5, checkpoint_every=10, patience=2)
  dirs = [epath.Path(tmp_path / f"lane{lane}") for lane in lanes]
  for d in dirs:
    d.mkdir(parents=True)
  managers = [_Checkpoints(int(s) or None) for s in start_K]
  best = train.early_stopping(cfg, [], len(lanes))
  best.bad_evals[:] = bad_evals_K
  at = np.asarray(start_K)
  # Scripted dev losses: lane 0's falls at every evaluation, lane 1's is best at step 5.
  dev = (lambda s: 1 / (1 + s), lambda s: abs(s - 5) + 1.0)

  def step(active_K, steps_K):
    nonlocal at
    at = steps_K
    return {"loss": np.float32(0.5) * steps_K if len(lanes) > 1 else np.float32(0.5 * steps_K[0])}

  steps, stopped = train.loop(
    cfg,
    dirs,
    managers,
    np.asarray(start_K),
    best,
    "test",
    step=step,
    dev_loss=lambda: np.array([dev[lane](s) for lane, s in zip(lanes, at)]),
    keep=lambda improved_K: None,
    tree=lambda i: {},
  )
  lines = [(d / "metrics.jsonl").read_text() for d in dirs]
  return [(int(a), bool(b), int(c), m.saved, t) for a, b, c, m, t in zip(steps, stopped, best.step, managers, lines)]


def test_a_pack_s_lanes_log_evaluate_checkpoint_and_stop_as_each_alone(tmp_path):
  """The one loop of a run alone and a pack: every lane on the schedule of a run alone, the last step
  logged, evaluated and saved off the cadence, and a lane out of patience stopped and saved."""
  packed = _lanes_loop(tmp_path / "packed", [0, 1], [0, 0], [0, 0])
  alone = [_lanes_loop(tmp_path / f"alone{lane}", [lane], [0], [0])[0] for lane in (0, 1)]
  assert packed == alone
  (steps0, stopped0, best0, saved0, lines0), (steps1, stopped1, best1, saved1, lines1) = packed
  assert (steps0, stopped0, best0, saved0) == (23, False, 23, [10, 20, 23])
  assert (steps1, stopped1, best1, saved1) == (15, True, 5, [10, 15])  # No gain at 10 and 15: stopped.
  records = [json.loads(line) for line in lines0.splitlines()]
  assert [r["step"] for r in records if "dev_loss" in r] == [0, 5, 10, 15, 20, 23]
  assert [r["step"] for r in records if "loss" in r] == [5, 10, 15, 20, 23]
  # Resumed at step 15 out of patience: no step; with patience left: on to the cap.
  resumed = _lanes_loop(tmp_path / "resumed", [0, 1], [15, 15], [2, 0])
  assert [lane[:4] for lane in resumed] == [(15, True, 0, []), (23, False, 20, [20, 23])]
  assert resumed[0][4] == "" and [json.loads(line)["step"] for line in resumed[1][4].splitlines()] == [20, 20, 23, 23]
