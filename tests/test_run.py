"""A whole run on the 8-device mesh (data x fsdp x tensor) matches the same run on one device."""

import pytest
from conftest import tiny_study

from launch import local
from scaling import grid
from scaling import run as run_lib
from scaling import study as study_lib


def _execute(workdir, shape):
  study = study_lib.validate(tiny_study(**{"mesh.shape": shape, "finetune.d_f": (32,)}), 8)
  runs = grid.expand(study)
  local.write_plan(study, runs, workdir)
  return [run_lib.execute(r, workdir) for r in runs]


def test_sharded_runs_match_single_device_runs(tmp_path):
  one = _execute(tmp_path / "one", {"data": 1, "fsdp": 1, "tensor": 1})
  eight = _execute(tmp_path / "eight", {"data": 2, "fsdp": 2, "tensor": 2})
  assert [r["id"] for r in one] == [r["id"] for r in eight]  # The mesh is not part of a run's id.
  for a, b in zip(one, eight):
    assert a["train"]["steps"] == b["train"]["steps"]
    for key in ("heldout_loss", "test_loss"):
      if key in a["metrics"]:
        assert b["metrics"][key] == pytest.approx(a["metrics"][key], rel=2e-3), key
