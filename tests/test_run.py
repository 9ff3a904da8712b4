"""Whole runs on the 8-device mesh (data x fsdp x tensor) match the same runs on one device:
pretraining, fine-tuning, and an EFT run whose models share the mesh and its rules."""

import os
import sys
import warnings

import processes
import pytest
from conftest import tiny_study

from launch import local
from scaling import context as context_lib
from scaling import kinds
from scaling import run as run_lib
from scaling import study as study_lib

# Relative (and absolute, for values near 0), as tests/test_run_multihost.py holds two hosts to one.
# Measured: at most 1.3e-7 apart (the fine-tune's test loss; its best dev loss 1.1e-7).
TOL = 1e-5


def _execute(workdir, shape):
  study = study_lib.validate(
    tiny_study(
      **{
        "mesh.shape": shape,
        "finetune.d_f": (32,),
        "eft": {"enabled": True, "betas": (0.5,)},
        # Checkpoints only at each run's end: nothing here resumes, and every save costs a fraction of a second.
        "pretrain.train.checkpoint_every": 20,
        "finetune.train.checkpoint_every": 20,
      }
    ),
    8,
  )
  runs = kinds.expand(study)
  local.write_plan(study, runs, workdir)
  return runs, [run_lib.execute(r, workdir) for r in runs]


def _assert_close(b, a, where):
  """Floats within TOL, anything else equal."""
  if isinstance(a, float) and isinstance(b, float):
    assert b == pytest.approx(a, rel=TOL, abs=TOL), where
  else:
    assert b == a, where


@pytest.mark.slow
def test_sharded_runs_match_single_device_runs(tmp_path):
  runs, one = _execute(tmp_path / "one", {"data": 1, "fsdp": 1, "tensor": 1})
  _, eight = _execute(tmp_path / "eight", {"data": 2, "fsdp": 2, "tensor": 2})
  assert [r["id"] for r in one] == [r["id"] for r in eight]  # The mesh is not part of a run's id.
  assert [r["kind"] for r in one] == ["pretrain", "finetune", "eft"]
  for a, b in zip(one, eight):
    assert set(a["metrics"]) == set(b["metrics"]) and set(a.get("train", {})) == set(b.get("train", {}))
    for key, value in a["metrics"].items():
      _assert_close(b["metrics"][key], value, (a["kind"], key))
    for key, value in a.get("train", {}).items():
      if key != "train_seconds":
        _assert_close(b["train"][key], value, (a["kind"], "train", key))
    for i, value in enumerate(a.get("layer_change", [])):
      _assert_close(b["layer_change"][i], value, (a["kind"], "layer_change", i))
  # The EFT run scores the task at its fine-tune's length and the corpus at its base's.
  ctx = context_lib.context(runs[2], tmp_path / "one")
  assert ctx.eval_length(ctx.sources.task("qa", "test")) == 16 and ctx.eval_length(ctx.sources.corpus("heldout")) == 48


def test_run_answers_a_bad_spec_in_one_line(tmp_path):
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = processes.run(
    [sys.executable, "-m", "scaling.run", "--spec", str(tmp_path / "spec.json")],
    cwd=root,
    env={**os.environ, "PYTHONPATH": root},
  )
  assert proc.returncode != 0 and "not a readable run spec" in proc.stderr, proc.stderr
  assert "Traceback" not in proc.stderr


# The same command line as above, called in this process (no process to start): each
# mistake ends in argparse's usage and a one-line error (exit status 2), before any host is joined.
@pytest.mark.parametrize(
  "flags, message",
  [
    (("--coordinator", "127.0.0.1:1234"), "--coordinator, --num-processes and --process-id go together"),
    (("--coordinator", "127.0.0.1:1", "--num-processes", "2", "--process-id", "2"), "--process-id=2 with"),
    (("--distributed", "--coordinator", "127.0.0.1:1"), "do not combine it with --coordinator"),
    (("--coordinator", "localhost", "--num-processes", "2", "--process-id", "0"), "allowed: HOST:PORT"),
  ],
)
def test_run_answers_bad_flags_in_one_line(tmp_path, capsys, flags, message):
  with pytest.raises(SystemExit) as exit_:
    run_lib.main(["--spec", str(tmp_path / "spec.json"), *flags])
  err = capsys.readouterr().err
  assert exit_.value.code == 2 and err.startswith("usage: "), err
  assert message in err.splitlines()[-1] and ": error: " in err.splitlines()[-1]  # The error in one line.


def test_warnings_are_one_line_each():
  run_lib.setup_runtime()
  line = warnings.formatwarning("overflow encountered in exp", RuntimeWarning, "/x/laws.py", 12, "  y = np.exp(x)")
  assert line == "warning: overflow encountered in exp (RuntimeWarning)\n"
