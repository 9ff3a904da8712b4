"""The layer-locality analysis: per-block weight change averaged per method, transplants beside
their fine-tunes; nothing for a study without either."""

import pandas as pd

from analysis import locality


def _table():
  rows = []
  for method, changes in [
    ("full", ([0.1, 0.3], [0.2, 0.5])),
    ("lora", ([0.01, 0.02], [0.03, 0.04])),
    ("prompt-length4", ([0.0, 0.0], [0.0, 0.0])),
  ]:
    for d_f, change in zip((16, 32), changes):
      rows.append(
        {
          "id": f"ft-{method}-{d_f}",
          "kind": "finetune",
          "task": "qa",
          "method": method,
          "size": "d32l2",
          "non_embedding_params": 25000,
          "pretrain_tokens": 1e6,
          "d_f": d_f,
          "seed": 0,
          "layer_change": change,
          "metrics.test_loss": 1.0,
          "metrics.knowledge": 0.5,
          "metrics.behaviour": 0.9,
          "metrics.delta_heldout_loss": 0.4,
          "metrics.delta_cloze_knowledge": -0.2,
        }
      )
  for part, loss, behaviour in [("lower", 1.1, 0.8), ("upper", 2.0, 0.1)]:
    rows.append(
      {
        "id": f"tp-{part}",
        "kind": "transplant",
        "task": "qa",
        "method": "full",
        "size": "d32l2",
        "non_embedding_params": 25000,
        "d_f": 32,
        "seed": 0,
        "part": part,
        "k": 1,
        "finetuned": "ft-full-32",
        "layer_change": [0.0, 0.5] if part == "lower" else [0.2, 0.0],
        "metrics.test_loss": loss,
        "metrics.knowledge": 0.5,
        "metrics.behaviour": behaviour,
        "metrics.delta_heldout_loss": 0.1,
        "metrics.delta_cloze_knowledge": 0.0,
      }
    )
  rows.append({"id": "pt", "kind": "pretrain", "size": "d32l2", "non_embedding_params": 25000, "seed": 0})
  return pd.DataFrame(rows)


def test_layer_changes_are_averaged_per_method_and_methods_that_change_no_weight_are_left_out():
  points = locality.layer_points(_table())
  assert list(points["method"]) == ["full", "lora"]
  full = points[points["method"] == "full"].iloc[0]
  assert (full["block 0"], full["block 1"]) == (0.15, 0.4)


def test_transplants_sit_beside_their_fine_tune_in_the_report():
  points = locality.transplant_points(_table())
  assert list(zip(points["part"], points["k"])) == [("none", 0), ("lower", 1), ("upper", 1)]
  assert list(points["behaviour"]) == [0.9, 0.8, 0.1] and list(points["test_loss"]) == [1.0, 1.1, 2.0]
  lines = "\n".join(locality.report_lines(_table()))
  assert "## Layer locality" in lines and "### Transplants" in lines and "| upper | 1 |" in lines
  assert "### Relative weight change per block" in lines


def test_no_section_without_layer_changes_or_transplants():
  table = _table()
  table = table[table["kind"] != "transplant"].drop(columns=["layer_change"])
  assert locality.report_lines(table) == []


def test_a_size_at_two_pretraining_budgets_is_two_bases():
  table = _table()
  ft = table[table["kind"] == "finetune"]
  shorter = ft.assign(
    id=ft["id"] + "-shorter",
    pretrain_tokens=5e5,
    layer_change=[[2 * x for x in change] for change in ft["layer_change"]],
  )
  points = locality.layer_points(pd.concat([table, shorter], ignore_index=True))
  full = points[points["method"] == "full"].set_index("base")
  assert full.loc["d32l2 at D_p 1e+06", "block 1"] == 0.4 and full.loc["d32l2 at D_p 5e+05", "block 1"] == 0.8
  tp = locality.transplant_points(pd.concat([table, shorter], ignore_index=True))
  assert set(tp["base"]) == {"d32l2 at D_p 1e+06"}  # The transplants' fine-tune's base only.
