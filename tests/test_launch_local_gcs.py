"""A study whose workdir is gs://, against a Cloud Storage server on loopback (conftest.storage):
killed mid-run, resumed by the same command, its results equal to the same study on a local disk."""

import json
import os
import subprocess
import sys
import time

import processes
import pytest
from etils import epath
from test_metric_writers import assert_events_match_metrics, local_copy

from scaling import results

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = """
import sys
sys.path.insert(0, {tests!r})
from conftest import tiny_study

def get_config():
  # Pretraining long enough to be killed between its checkpoints.
  return tiny_study(**{{"pretrain.steps": (60,), "finetune.d_f": (16,)}})
"""


def _command(config: str, workdir: str) -> list[str]:
  return [sys.executable, "-m", "launch.local", "--config", config, "--workdir", workdir, "--bootstrap", "10"]


def _runs(workdir: str) -> dict[str, dict]:
  """Each run's result record and metrics lines, by run id."""
  runs = epath.Path(workdir) / "runs"
  return {
    d.name: {"result": results.read_result(d), "metrics": (d / "metrics.jsonl").read_text().splitlines()}
    for d in sorted(runs.iterdir())
  }


def _killed_after_a_checkpoint(command: list[str], workdir: str, env: dict, cwd) -> str:
  """Starts the study, kills it once its pretraining run has a checkpoint; returns that run's id."""
  proc = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
      # Orbax commits a checkpoint on gs:// by writing this file last.
      ckpts = list(epath.Path(workdir).glob("runs/pt-*/ckpt/*/commit_success.txt"))
      if ckpts:
        proc.kill()
        return ckpts[0].parent.parent.parent.name
      time.sleep(0.05)
    pytest.fail(f"no checkpoint before the study ended (exit {proc.poll()}): {proc.stderr.read()[-2000:]}")
  finally:
    proc.kill()
    proc.wait()


@pytest.mark.slow
def test_a_gs_study_killed_mid_run_resumes_and_equals_the_study_on_a_local_disk(storage, tmp_path):
  config = tmp_path / "study.py"
  config.write_text(CONFIG.format(tests=os.path.join(REPO, "tests")))
  env = {**os.environ, **storage.env, "PYTHONPATH": REPO}
  workdir = storage.workdir()
  command = _command(str(config), workdir)

  killed = _killed_after_a_checkpoint(command, workdir, env, tmp_path)
  assert results.read_result(epath.Path(workdir) / "runs" / killed) is None  # Killed mid-run.
  resumed = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"resuming {killed} from step " in resumed.stdout + resumed.stderr
  assert "report: gs://" in resumed.stdout
  assert (epath.Path(workdir) / "report" / "fits.json").exists()

  local = tmp_path / "local"
  alone = processes.run(_command(str(config), str(local)), cwd=tmp_path, env=env)  # Forked: no JAX start-up.
  assert alone.returncode == 0, alone.stderr[-3000:]
  on_gcs, on_disk = _runs(workdir), _runs(str(local))
  assert sorted(on_gcs) == sorted(on_disk) and len(on_gcs) == 2
  for run_id, run in on_disk.items():
    assert on_gcs[run_id]["metrics"] == run["metrics"], run_id
    assert on_gcs[run_id]["result"]["metrics"] == run["result"]["metrics"], run_id
    # TensorBoard's reader, on a copy: the resumed run's curves hold each step once.
    assert_events_match_metrics(local_copy(epath.Path(workdir) / "runs" / run_id, epath.Path(tmp_path) / run_id))
  gcs_fits = json.loads((epath.Path(workdir) / "report" / "fits.json").read_text())
  assert gcs_fits == json.loads((local / "report" / "fits.json").read_text())
