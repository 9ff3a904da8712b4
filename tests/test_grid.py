"""Run ids derive from specs: stable across processes, different when the spec differs."""

import json
import os
import subprocess
import sys

import pytest
from conftest import tiny_study
from etils import epath

from launch import plan
from scaling import grid, kinds
from scaling import study as study_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _runs(**overrides):
  return kinds.expand(study_lib.validate(tiny_study(**overrides), num_devices=8))


def test_grid_shape_and_dependencies():
  runs = _runs(**{"model.sizes": ("d32l2", "d48l2"), "finetune.d_f": (16, 32, 64), "finetune.seeds": (0, 1)})
  pre = [r for r in runs if r.kind == "pretrain"]
  ft = [r for r in runs if r.kind == "finetune"]
  assert len(pre) == 2 and len(ft) == 2 * 3 * 2
  position = {r.id: i for i, r in enumerate(runs)}
  for r in ft:
    (base,) = r.deps
    assert position[base] < position[r.id]
    assert r.config["base"] == base
  assert len({r.id for r in runs}) == len(runs)


def test_pretraining_seeds_give_each_size_a_base_per_seed_and_keep_seed_0s_ids():
  one = _runs(**{"model.sizes": ("d32l2", "d48l2"), "eft.enabled": True, "transplant.enabled": True})
  runs = _runs(
    **{"model.sizes": ("d32l2", "d48l2"), "pretrain.seeds": (0, 3), "eft.enabled": True, "transplant.enabled": True}
  )
  pre = [r for r in runs if r.kind == "pretrain"]
  assert sorted((r.config["size"], r.config["seed"]) for r in pre) == [
    ("d32l2", 0),
    ("d32l2", 3),
    ("d48l2", 0),
    ("d48l2", 3),
  ]
  # Each base is fine-tuned and transplanted; seed 3's runs say so in their labels.
  for kind in ("finetune", "transplant"):
    assert {r.deps[0] for r in runs if r.kind == kind} == {r.id for r in pre}
  assert {grid.run_label(r.id) for r in runs if r.kind == "finetune" and "-p3-" in r.id} == {
    f"ft-{size}-p3-qa-full-df{d_f}-s0" for size in ("d32l2", "d48l2") for d_f in (16, 32)
  }
  assert len({grid.run_label(r.id) for r in runs}) == len(runs)
  # EFT recombines the first seed's bases; every run of seed 0 is the one-seed study's.
  seed_0 = {r.id for r in pre if r.config["seed"] == 0}
  assert {r.config["base"] for r in runs if r.kind == "eft"} == seed_0
  assert {r.id for r in one} <= {r.id for r in runs} and len(runs) - len(one) == 2 + 2 * 2 + 2 * 2
  with pytest.raises(study_lib.StudyError, match=r"^pretrain.seeds=\[\]; allowed: a non-empty list of integers$"):
    _runs(**{"pretrain.seeds": ()})


def test_ids_stable_across_processes():
  here = [r.id for r in _runs()]
  code = (
    "import sys, json; sys.path.insert(0, 'tests');"
    "from conftest import tiny_study; from scaling import kinds, study;"
    "print(json.dumps([r.id for r in kinds.expand(study.validate(tiny_study(), 8))]))"
  )
  env = {**os.environ, "PYTHONPATH": ROOT, "PYTHONHASHSEED": "123"}
  there = json.loads(
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    .stdout.strip()
    .splitlines()[-1]
  )
  assert here == there


def test_ids_follow_what_a_run_is_not_how_it_runs():
  base = {r.id for r in _runs()}
  assert {r.id for r in _runs(**{"finetune.train.learning_rate": 5e-4})} != base
  # Evaluation batching and the mesh do not change what a run computes: same ids.
  assert {r.id for r in _runs(**{"eval.batch_size": 8})} == base
  assert {r.id for r in _runs(**{"memory.loss_chunk": 8})} == base
  assert {r.id for r in _runs(**{"mesh.shape": {"data": 2}})} == base


def test_spec_round_trips_through_json():
  for r in _runs():
    assert grid.Run.from_json(json.loads(json.dumps(r.to_json()))) == r


def test_only_runs_the_runs_it_names_and_what_they_need():
  study = {"model.sizes": ("d32l2", "d48l2"), "finetune.d_f": (16, 32), "eft": {"enabled": True, "betas": (1.0,)}}
  every = _runs(**study)
  eft = next(r for r in every if r.kind == "eft" and r.config["size"] != r.config["finetune_size"])
  named = {eft.id, next(r.id for r in every if r.id.startswith("ft-d48l2-qa-full-df32-s0"))}
  picked = _runs(**study, only=tuple(grid.run_label(i) for i in named))
  ids = {r.id for r in picked}
  assert named <= ids and all(set(r.deps) <= ids for r in picked)  # What the named runs need is there too ...
  needed = set().union(*(r.deps for r in picked))
  assert ids == named | needed and len(ids) < len(every)  # ... and nothing else.
  assert [r.id for r in picked] == [r.id for r in every if r.id in ids]  # The grid's ids, in its order.


def test_only_names_a_run_the_grid_lacks_before_anything_runs():
  with pytest.raises(study_lib.StudyError, match=r"'ft-d32l2-qa-full-df64-s0' is not a run of this study"):
    study_lib.validate(tiny_study(only=("ft-d32l2-qa-full-df64-s0",)), num_devices=8)
  with pytest.raises(study_lib.StudyError, match=r"only=\(3,\); allowed: a tuple of run labels"):
    study_lib.validate(tiny_study(only=(3,)), num_devices=8)


def test_a_workdirs_planned_runs_come_from_its_study_json(tmp_path, capsys):
  workdir = epath.Path(tmp_path)
  assert kinds.planned_ids(workdir) is None  # No study.json: no plan to go by.
  study = study_lib.validate(tiny_study(**{"model.sizes": ("d32l2", "d48l2")}, only=("pt-d32l2-20",)), 8)
  plan.write_plan(study, kinds.expand(study), workdir)
  # The whole grid, whatever subset the launch ran.
  assert kinds.planned_ids(workdir) == {r.id for r in _runs(**{"model.sizes": ("d32l2", "d48l2")})}
  (workdir / "study.json").write_text(json.dumps({"name": "old"}))  # Written by a version with other fields.
  assert kinds.planned_ids(workdir) is None
  assert "study.json does not expand here (" in capsys.readouterr().out
