"""Zero-shot runs: one per base and task, after the base only; each scores the base alone, as an EFT
run at beta 0 does, and the report shows them."""

import pytest
from conftest import tiny_study

from analysis import report
from launch import local
from scaling import grid, kinds, results
from scaling import run as run_lib
from scaling import study as study_lib

ZEROSHOT = {
  "model.sizes": ("d32l2", "d48l2"),
  "finetune.d_f": (32,),
  "zeroshot": {"enabled": True},
  "pretrain.train.checkpoint_every": 20,
  "finetune.train.checkpoint_every": 20,
}


def _runs(**overrides):
  return kinds.expand(study_lib.validate(tiny_study(**{**ZEROSHOT, **overrides}), 8))


def test_one_zero_shot_run_per_base_and_task_after_its_base_leaving_the_other_runs_as_they_were():
  runs = _runs(**{"pretrain.seeds": (0, 1), "finetune.tasks": ("qa", "qa_wrong")})
  by_id = {r.id: r for r in runs}
  zs = [r for r in runs if r.kind == "zeroshot"]
  assert sorted(grid.run_label(r.id) for r in zs) == sorted(
    f"zs-{size}{seed}-{task}" for size in ("d32l2", "d48l2") for seed in ("", "-p1") for task in ("qa", "qa_wrong")
  )
  for r in zs:
    base = by_id[r.config["base"]]
    assert r.deps == (base.id,) and base.kind == "pretrain" and base.config["size"] == r.config["size"]
  off = _runs(**{"pretrain.seeds": (0, 1), "finetune.tasks": ("qa", "qa_wrong"), "zeroshot": {"enabled": False}})
  assert [r.id for r in off] == [r.id for r in runs if r.kind != "zeroshot"]


@pytest.mark.slow
def test_a_zero_shot_run_scores_its_base_alone_as_eft_at_beta_0_does(tmp_path):
  study = study_lib.validate(
    tiny_study(**ZEROSHOT, eft={"enabled": True, "d_f": (32,), "betas": (0.0,), "pairs": (("d48l2", "d32l2"),)}), 8
  )
  runs = kinds.expand(study)
  local.write_plan(study, runs, tmp_path)
  done = {r.id: run_lib.execute(r, tmp_path) for r in runs}
  zs = {rec["size"]: rec for rec in done.values() if rec["kind"] == "zeroshot"}
  (eft,) = [rec for rec in done.values() if rec["kind"] == "eft"]
  assert set(zs) == {"d32l2", "d48l2"} and all(rec["d_f"] == 0 and rec["task"] == "qa" for rec in zs.values())
  # log p_base(N1) + 0 * (...): the base N1 alone, whatever N2's fine-tune is.
  assert set(zs["d48l2"]["metrics"]) == set(eft["metrics"]) == {"test_loss", "knowledge", "behaviour", "value_mass"}
  assert zs["d48l2"]["metrics"]["test_loss"] == pytest.approx(eft["metrics"]["test_loss"], abs=1e-5)
  assert zs["d48l2"]["metrics"]["knowledge"] == eft["metrics"]["knowledge"]
  assert zs["d48l2"]["metrics"]["value_mass"] == pytest.approx(eft["metrics"]["value_mass"], abs=1e-5)
  assert zs["d32l2"]["metrics"]["test_loss"] != zs["d48l2"]["metrics"]["test_loss"]
  assert zs["d48l2"]["non_embedding_params"] == eft["non_embedding_params"]
  lines = report.zeroshot_lines(results.load_table(tmp_path))
  assert lines[0] == "## Bases before fine-tuning (zero-shot)"
  header, _, *rows = lines[4].splitlines()
  assert header == "| task | base | N | test loss | knowledge | behaviour | value mass |"
  assert [r.split(" | ")[1] for r in rows] == ["pt-d32l2-20", "pt-d48l2-20"]  # By N.
  assert report.zeroshot_lines(results.load_table(tmp_path).query("kind != 'zeroshot'")) == []
