"""Transplant runs: the full fine-tune with its lower or upper blocks reset to the base, planned
after both, measured like a fine-tune; the study group is validated before anything runs."""

import pytest
from conftest import tiny_study

from launch import local
from scaling import kinds
from scaling import run as run_lib
from scaling import study as study_lib

TRANSPLANT = {"finetune.d_f": (16, 32), "transplant": {"enabled": True}}


@pytest.mark.slow
def test_transplants_reset_exactly_their_blocks_and_keep_the_rest(tmp_path):
  study = study_lib.validate(tiny_study(**TRANSPLANT), 8)
  runs = kinds.expand(study)
  local.write_plan(study, runs, tmp_path)
  by_id = {r.id: r for r in runs}
  transplants = [r for r in runs if r.kind == "transplant"]
  # d32l2 has 2 blocks: k = 1 of each part, at the largest D_f (the default).
  assert sorted((r.config["part"], r.config["k"], r.config["d_f"]) for r in transplants) == [
    ("lower", 1, 32),
    ("upper", 1, 32),
  ]
  for r in transplants:
    assert by_id[r.config["base"]].kind == "pretrain" and by_id[r.config["finetuned"]].config["d_f"] == 32
    assert set(r.deps) == {r.config["base"], r.config["finetuned"]}
  done = {r.id: run_lib.execute(r, tmp_path) for r in runs}
  tuned = done[transplants[0].config["finetuned"]]
  moved = tuned["layer_change"]
  assert len(moved) == 2 and min(moved) > 0  # Full tuning moved both blocks.
  for r in transplants:
    rec = done[r.id]
    kept = 1 if r.config["part"] == "lower" else 0
    # The reset block is the base's exactly; the other is the fine-tune's exactly.
    assert rec["layer_change"][1 - kept] == 0.0 and rec["layer_change"][kept] == pytest.approx(moved[kept], rel=1e-6)
    assert {
      "test_loss",
      "knowledge",
      "behaviour",
      "heldout_loss",
      "delta_heldout_loss",
      "cloze_knowledge",
      "delta_cloze_knowledge",
    } <= set(rec["metrics"])
    assert rec["metrics"]["test_loss"] != pytest.approx(tuned["metrics"]["test_loss"], abs=1e-6)
    assert rec["metrics"]["heldout_loss"] - rec["metrics"]["delta_heldout_loss"] == pytest.approx(
      done[r.config["base"]]["metrics"]["heldout_loss"], abs=1e-6
    )


@pytest.mark.parametrize(
  "overrides, message",
  [
    (
      {"finetune.methods": ({"name": "lora", "rank": 2},)},
      "transplant.enabled needs full tuning of every layer in finetune.methods",
    ),
    (
      {"transplant": {"enabled": True, "parts": ("middle",)}},
      "transplant.parts=('middle',); allowed: a non-empty subset of ('lower', 'upper')",
    ),
    (
      {"transplant": {"enabled": True, "d_f": (64,)}},
      "transplant.d_f contains 64, which this study does not fine-tune on",
    ),
    (
      {"transplant": {"enabled": True, "method": "full-layers0_1"}},
      "transplant.method='full-layers0_1' is not a method",
    ),
  ],
)
def test_bad_transplant_groups_fail_validation_naming_the_field(overrides, message):
  with pytest.raises(study_lib.StudyError, match="transplant") as e:
    study_lib.validate(tiny_study(**{**TRANSPLANT, **overrides}), 1)
  assert message in str(e.value)
