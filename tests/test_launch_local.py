"""End to end on a tiny study: every run, the fit and the report; a second launch trains nothing."""

import json
import os
import sys

import processes
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIG = """
import sys
sys.path.insert(0, {tests!r})
from conftest import tiny_study

def get_config():
  return tiny_study(**{{"model.sizes": ("d32l2", "d48l2"), "finetune.d_f": (8, 16, 32, 64, 128)}})
"""


def _launch(config, workdir, *extra):
  return processes.run([sys.executable, "-m", "launch.local", "--config", str(config), "--workdir", str(workdir),
                        *extra], cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})


@pytest.mark.slow
def test_tiny_study_end_to_end_then_nothing_to_do(tmp_path):
  config = tmp_path / "tiny.py"
  config.write_text(CONFIG.format(tests=os.path.join(ROOT, "tests")))
  workdir = tmp_path / "w"
  first = _launch(config, workdir, "--bootstrap=50")  # Fewer replicates than a study's 200: test time.
  assert first.returncode == 0, first.stderr[-3000:]
  assert "12 runs" in first.stdout and "runs: 12 executed, 0 already done" in first.stdout
  assert "alpha=" in first.stdout and "report: " in first.stdout

  fits = json.loads((workdir / "report" / "fits.json").read_text())
  joint = {f["law"]: f for f in fits if f["x"] == "non_embedding_params"}
  # Two bases: the additive law's A / N^alpha is two numbers, which cannot fix A, alpha and E apart.
  assert set(joint) == {"multiplicative"} and "too few to fit and validate the additive law" in first.stderr
  assert joint["multiplicative"]["num_points"] == 10 and set(joint["multiplicative"]["params"]) == {"A", "alpha", "beta", "E"}
  # Without the larger base one N is left, which cannot fix alpha: the largest D_f is held out instead.
  assert joint["multiplicative"]["validation"]["holdout"] == "largest_d"
  assert len(joint["multiplicative"]["validation"]["heldout_relative_errors"]) == 2  # Both bases at D_f 128.
  lo, hi = joint["multiplicative"]["intervals"]["alpha"]
  assert lo <= joint["multiplicative"]["params"]["alpha"] <= hi
  curves = {(f["base"], f["law"]) for f in fits if f["base"]}
  assert curves == {(b, law) for b in ("d32l2", "d48l2") for law in ("single", "rectified")}
  report = (workdir / "report" / "report.md").read_text()
  for text in ("fit_qa_full_non_embedding_params.png", "residuals_qa_full_non_embedding_params.png",
               "curves_qa_full.png", "| multiplicative |", "| rectified |", "| single |",
               "Δh (largest_d)", "knowledge", "behaviour"):
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

  # The same settings: the CLI prints the report's fits without fitting again.
  fitted = (workdir / "report" / "fits.json").stat().st_mtime_ns
  refit = processes.run([sys.executable, "-m", "analysis.fit", "--workdir", str(workdir), "--bootstrap=50"], cwd=ROOT,
                        env={**os.environ, "PYTHONPATH": ROOT})
  assert refit.returncode == 0 and "qa/full over non_embedding_params: L = " in refit.stdout
  assert (workdir / "report" / "fits.json").stat().st_mtime_ns == fitted
