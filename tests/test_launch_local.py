"""End to end on a tiny study: every run, the fit and the report; a second launch trains nothing;
Ctrl-C stops a launch in one line and the same command finishes it."""

import json
import os
import shlex
import signal
import subprocess
import sys
import time
import warnings

import processes
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIG = """
import sys
sys.path.insert(0, {tests!r})
from conftest import tiny_study

def get_config():
  return tiny_study(**{overrides})
"""


def _launch(config, workdir, *extra):
  return processes.run(
    [sys.executable, "-m", "launch.local", "--config", str(config), "--workdir", str(workdir), *extra],
    cwd=ROOT,
    env={**os.environ, "PYTHONPATH": ROOT},
  )


@pytest.mark.slow
def test_tiny_study_end_to_end_then_nothing_to_do(tmp_path, monkeypatch, capsys):
  config = tmp_path / "tiny.py"
  # Five D_f: the rectified curve needs four left when the largest is held out. Checkpoints only at
  # each run's end: nothing here resumes, and every save costs a fraction of a second.
  overrides = {
    "model.sizes": ("d32l2", "d48l2"),
    "finetune.d_f": (8, 16, 32, 64, 128),
    "pretrain.train.checkpoint_every": 20,
    "finetune.train.checkpoint_every": 20,
  }
  config.write_text(CONFIG.format(tests=os.path.join(ROOT, "tests"), overrides=overrides))
  workdir = tmp_path / "w"
  first = _launch(config, workdir, "--bootstrap=50")  # Fewer replicates than a study's 200: test time.
  assert first.returncode == 0, first.stderr[-3000:]
  assert "12 runs" in first.stdout and "runs: 12 executed, 0 already done" in first.stdout
  assert "alpha=" in first.stdout and "report: " in first.stdout

  fits = json.loads((workdir / "report" / "fits.json").read_text())
  joint = {f["law"]: f for f in fits if f["x"] == "non_embedding_params"}
  # Two bases: the additive law's A / N^alpha is two numbers, which cannot fix A, alpha and E apart.
  assert set(joint) == {"multiplicative"} and "too few to fit and validate the additive law" in first.stderr
  assert joint["multiplicative"]["num_points"] == 10
  assert set(joint["multiplicative"]["params"]) == {"A", "alpha", "beta", "E"}
  # Without the larger base one N is left, which cannot fix alpha: the largest D_f is held out instead.
  assert joint["multiplicative"]["validation"]["holdout"] == "largest_d"
  assert len(joint["multiplicative"]["validation"]["heldout_relative_errors"]) == 2  # Both bases at D_f 128.
  lo, hi = joint["multiplicative"]["intervals"]["alpha"]
  assert lo <= joint["multiplicative"]["params"]["alpha"] <= hi
  curves = {(f["base"], f["law"]) for f in fits if f["base"]}
  assert curves == {(b, law) for b in ("d32l2", "d48l2") for law in ("single", "rectified")}
  report = (workdir / "report" / "report.md").read_text()
  for text in (
    "fit_qa_full_non_embedding_params.png",
    "residuals_qa_full_non_embedding_params.png",
    "curves_qa_full.png",
    "| multiplicative |",
    "| rectified |",
    "| single |",
    "Δh (largest_d)",
    "knowledge",
    "behaviour",
  ):
    assert text in report, text
  for name in ("fit_qa_full_non_embedding_params.png", "curves_qa_full.png"):
    assert (workdir / "report" / name).stat().st_size > 10_000
  study = json.loads((workdir / "study.json").read_text())
  assert study["model"]["sizes"] == ["d32l2", "d48l2"]
  for run in (workdir / "runs").iterdir():
    spec = json.loads((run / "spec.json").read_text())
    assert spec["id"] == run.name
    result = json.loads((run / "result.json").read_text())
    assert result["id"] == run.name and (run / "model").is_dir() and (run / "metrics.jsonl").exists()
    if spec["kind"] == "finetune":
      assert {"test_loss", "knowledge", "behaviour", "heldout_loss", "base_heldout_loss"} <= set(result["metrics"])

  mtimes = {p: p.stat().st_mtime_ns for p in workdir.glob("runs/*/result.json")}
  second = _launch(config, workdir, "--config.finetune.train.log_every=5", "--bootstrap=50")
  assert second.returncode == 0, second.stderr[-3000:]
  assert "runs: 0 executed, 12 already done" in second.stdout
  assert mtimes == {p: p.stat().st_mtime_ns for p in workdir.glob("runs/*/result.json")}

  # The same settings: the CLI prints the report's fits without fitting again. In this process: its
  # entry point is what is tested, not another JAX start-up (seconds).
  from analysis import fit as fit_lib  # Here, not at collection: every test worker collects this file.

  fitted = (workdir / "report" / "fits.json").stat().st_mtime_ns
  monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)  # The CLI sets its own.
  capsys.readouterr()
  fit_lib.main(["--workdir", str(workdir), "--bootstrap=50"])  # Raises SystemExit where the CLI fails.
  assert "qa/full over non_embedding_params: L = " in capsys.readouterr().out
  assert (workdir / "report" / "fits.json").stat().st_mtime_ns == fitted

  # The study narrowed in place: the report is of the study as planned now, not of every run the
  # workdir keeps (here the D_f 128 fine-tunes of the study before).
  third = _launch(config, workdir, "--config.finetune.d_f=(8,16,32,64)", "--bootstrap=50")
  assert third.returncode == 0, third.stderr[-3000:]
  assert "runs: 0 executed, 10 already done" in third.stdout
  assert f"report: 2 finished runs in {workdir}/runs are not of its study.json's study; left out" in third.stdout
  fits = json.loads((workdir / "report" / "fits.json").read_text())
  (joint,) = [f for f in fits if f["x"] == "non_embedding_params" and f["law"] == "multiplicative"]
  assert joint["num_points"] == 8


def _interrupt_when(argv: list[str], started) -> subprocess.CompletedProcess:
  """Runs a command until `started()` holds, then presses Ctrl-C."""
  # Its own process group, all of which gets SIGINT, as a terminal's foreground job does on Ctrl-C,
  # whose default action it gets whatever this process was started with.
  proc = subprocess.Popen(
    argv,
    cwd=ROOT,
    env={**os.environ, "PYTHONPATH": ROOT},
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    process_group=0,
    preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
  )
  try:
    deadline = time.monotonic() + 120
    while not started() and proc.poll() is None and time.monotonic() < deadline:
      time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
  finally:
    proc.kill()  # Nothing left to kill, unless the interrupt did not stop it.
  return subprocess.CompletedProcess(argv, proc.returncode, out, err)


@pytest.mark.slow
def test_ctrl_c_stops_in_one_line_and_the_same_command_finishes(tmp_path):
  config = tmp_path / "tiny.py"
  config.write_text(CONFIG.format(tests=os.path.join(ROOT, "tests"), overrides={}))  # A base, two fine-tunes.
  workdir = tmp_path / "w"
  args = ["--config", str(config), "--workdir", str(workdir), "--noanalyse"]
  logs = lambda: list(workdir.glob("runs/pt-*/metrics.jsonl"))
  # The base's training log is started: it is compiling or training, and nothing has finished.
  first = _interrupt_when([sys.executable, "-m", "launch.local", *args], logs)
  assert first.returncode == 130, first.stderr[-3000:]
  lines = [line for line in first.stderr.splitlines() if line.strip()]
  assert (
    "Traceback" not in first.stderr
    and [line for line in lines if line.startswith("interrupted")]
    == [f"interrupted; the same command resumes: python -m launch.local {shlex.join(args)}"]
    == lines[-1:]
  )
  assert not list(workdir.glob("runs/*/result.json"))

  again = _launch(config, workdir, "--noanalyse")
  assert again.returncode == 0 and "Traceback" not in again.stderr, again.stderr[-3000:]
  assert "runs: 3 executed, 0 already done" in again.stdout
  assert sorted(p.parent.name for p in workdir.glob("runs/*/result.json")) == sorted(
    p.parent.name for p in workdir.glob("runs/*/spec.json")
  )
  # The resumed base's log, cut back to its checkpoint (or started afresh): each step once.
  logged = [json.loads(line) for line in logs()[0].read_text().splitlines()]
  assert [r["step"] for r in logged if "loss" in r] == [5, 10, 15, 20]
