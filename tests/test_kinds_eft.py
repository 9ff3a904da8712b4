"""EFT runs: planned with their dependencies, scored exactly as fine-tuned runs, re-run to the same
result after a kill."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from conftest import tiny_study

from launch import local
from scaling import kinds, results
from scaling import run as run_lib
from scaling import study as study_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EFT = {
  "model.sizes": ("d32l2", "d48l2"),
  "finetune.d_f": (32,),
  "eft": {"enabled": True, "d_f": (32,), "betas": (0.0, 1.0)},
  # Checkpoints only at each run's end: nothing here resumes, and every save costs a fraction of a second.
  "pretrain.train.checkpoint_every": 20,
  "finetune.train.checkpoint_every": 20,
}


def _plan(workdir, **overrides):
  study = study_lib.validate(tiny_study(**{**EFT, **overrides}), 8)
  runs = kinds.expand(study)
  local.write_plan(study, runs, workdir)
  return runs


def test_eft_cells_and_dependencies():
  runs = kinds.expand(study_lib.validate(tiny_study(**EFT), 8))
  by_id = {r.id: r for r in runs}
  eft = [r for r in runs if r.kind == "eft"]
  assert len(eft) == 2 * 2 * 2  # Every ordered pair of sizes (diagonal included) x 1 D_f x 2 betas.
  position = {r.id: i for i, r in enumerate(runs)}
  for r in eft:
    c = r.config
    assert by_id[c["base"]].config["size"] == c["size"] and by_id[c["base"]].kind == "pretrain"
    assert by_id[c["finetune_base"]].config["size"] == c["finetune_size"]
    ft = by_id[c["finetuned"]]
    assert ft.kind == "finetune" and ft.config["base"] == c["finetune_base"] and ft.config["d_f"] == 32
    assert set(r.deps) == {c["base"], c["finetune_base"], c["finetuned"]}
    assert all(position[d] < position[r.id] for d in r.deps)
  assert len({r.id for r in eft}) == len(eft)
  pairs = [(r.config["size"], r.config["finetune_size"]) for r in eft]
  only = kinds.expand(
    study_lib.validate(tiny_study(**{**EFT, "eft": {**EFT["eft"], "pairs": (("d48l2", "d32l2"),)}}), 8)
  )
  assert {(r.config["size"], r.config["finetune_size"]) for r in only if r.kind == "eft"} == {("d48l2", "d32l2")}
  assert ("d32l2", "d48l2") in pairs and ("d48l2", "d48l2") in pairs


@pytest.fixture(scope="module")
def eft_study(tmp_path_factory):
  """The EFT study run once, uninterrupted: (workdir, runs, records by id)."""
  workdir = tmp_path_factory.mktemp("eft")
  runs = _plan(workdir)
  return workdir, runs, {r.id: run_lib.execute(r, workdir) for r in runs}


@pytest.mark.slow
def test_eft_runs_score_as_their_parts(eft_study):
  workdir, runs, done = eft_study
  eft = [done[r.id] for r in runs if r.kind == "eft"]
  for rec in eft:
    assert rec["kind"] == "eft" and {"test_loss", "knowledge", "behaviour", "value_mass"} == set(rec["metrics"])
    assert {
      "size",
      "finetune_size",
      "beta",
      "task",
      "method",
      "d_f",
      "seed",
      "non_embedding_params",
      "finetune_non_embedding_params",
    } <= set(rec)
    assert results.read_result(workdir / "runs" / rec["id"]) == json.loads(json.dumps(rec, default=float))
    ft = done[rec["finetuned"]]
    if rec["size"] == rec["finetune_size"] and rec["beta"] == 1.0:
      # log p_base + (log p_ft - log p_base): the fine-tuned model itself, measured the same way.
      assert rec["metrics"]["test_loss"] == pytest.approx(ft["metrics"]["test_loss"], abs=1e-4)
      assert rec["metrics"]["knowledge"] == ft["metrics"]["knowledge"]
      assert rec["metrics"]["behaviour"] == ft["metrics"]["behaviour"]
    if rec["beta"] == 0.0:  # The base N1 alone: N2 does not matter.
      twin = next(r for r in eft if r["size"] == rec["size"] and r["beta"] == 0.0 and r["id"] != rec["id"])
      assert rec["metrics"]["test_loss"] == pytest.approx(twin["metrics"]["test_loss"], abs=1e-4)
  sizes = {r["size"]: r["non_embedding_params"] for r in eft}
  assert all(r["finetune_non_embedding_params"] == sizes[r["finetune_size"]] for r in eft)


@pytest.mark.slow
def test_killed_eft_run_is_rerun_to_the_same_result(tmp_path, eft_study):
  """An EFT run of a one-size study, killed and run again, ends as the same run of the study left uninterrupted."""
  clean, clean_runs, _ = eft_study
  target = _plan(tmp_path, **{"model.sizes": ("d32l2",), "finetune.d_f": (32,)})[-1]
  assert target.kind == "eft" and target in clean_runs
  for dep in target.deps:  # The same models to combine, trained once: only the EFT run itself runs again.
    shutil.copytree(clean / "runs" / dep, tmp_path / "runs" / dep, dirs_exist_ok=True)
  command = [sys.executable, "-m", "scaling.run", "--spec", str(tmp_path / "runs" / target.id / "spec.json")]
  env = {**os.environ, "PYTHONPATH": ROOT}
  progress = tmp_path / "runs" / target.id / "metrics.jsonl"
  proc = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    if progress.exists() and progress.read_text().strip():  # Test loss measured; answers not yet.
      break
    time.sleep(0.005)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert len(progress.read_text().splitlines()) == 1, "the run must be killed between its two measurements"
  assert results.read_result(tmp_path / "runs" / target.id) is None
  run_lib.execute(target, tmp_path)  # In this process: the same code as a run's own process.
  rerun = results.read_result(tmp_path / "runs" / target.id)
  assert rerun["metrics"] == results.read_result(clean / "runs" / target.id)["metrics"]
