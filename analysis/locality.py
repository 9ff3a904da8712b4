"""Layer locality: where fine-tuning changes the model, and which blocks hold what it learned.

- Per-layer weight change: each fine-tune's `layer_change` (per block, the relative Frobenius
  change of its projection weights against the base), averaged over D_f and seeds, for every
  method that changes weights.
- Transplants (`kind == "transplant"`): the full fine-tune with its lower or upper k blocks reset
  to the base, beside the untouched fine-tune (k = 0), on test loss, knowledge, behaviour and
  retention. The section appears when a study has either.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis import frames
from analysis import report as report_lib

TRANSPLANT_METRICS = {
  "test_loss": "test loss",
  "knowledge": "knowledge",
  "behaviour": "behaviour",
  "delta_heldout_loss": "Δ held-out loss",
  "delta_cloze_knowledge": "Δ cloze knowledge",
}


def _base_names(table: pd.DataFrame) -> dict[str, str]:
  """Each fine-tune's base name (`frames.base_names`), by run id."""
  ft = table[table["kind"] == "finetune"]
  return dict(zip(ft["id"], frames.base_names(ft)))


def layer_points(table: pd.DataFrame) -> pd.DataFrame:
  """Mean relative weight change per block: one row per (task, method, base) that changes weights."""
  if "layer_change" not in table:
    return pd.DataFrame()
  ft = table[(table["kind"] == "finetune") & table["layer_change"].notna()]
  ft = ft.assign(base=ft["id"].map(_base_names(table)))
  rows = []
  for (task, method, base, n), group in ft.groupby(["task", "method", "base", "non_embedding_params"]):
    mean = np.mean(np.stack(group["layer_change"].map(np.asarray).tolist()), axis=0)
    if mean.max() > 0:  # Prompt tuning and LoReFT change no weight.
      rows.append(
        {
          "task": task,
          "method": method,
          "base": base,
          "N": n,
          **{f"block {i}": round(float(x), 4) for i, x in enumerate(mean)},
        }
      )
  return pd.DataFrame(rows).sort_values(["task", "method", "N"], ignore_index=True) if rows else pd.DataFrame()


def transplant_points(table: pd.DataFrame) -> pd.DataFrame:
  """Transplant runs beside their untouched fine-tunes (part "none", k = 0), averaged over seeds."""
  if "kind" not in table or not (table["kind"] == "transplant").any():
    return pd.DataFrame()
  names = _base_names(table)
  tp = table[table["kind"] == "transplant"]
  tp = tp.assign(base=tp["finetuned"].map(names))
  tuned = table[table["id"].isin(tp["finetuned"])].assign(part="none", k=0)
  both = pd.concat([tp, tuned.assign(base=tuned["id"].map(names))], ignore_index=True)
  keys = ["task", "method", "base", "non_embedding_params", "d_f", "part", "k"]
  order = {"none": 0, "lower": 1, "upper": 2}
  return (
    both.groupby(keys, as_index=False)
    .agg(**{m: (f"metrics.{m}", "mean") for m in TRANSPLANT_METRICS if f"metrics.{m}" in both})
    .sort_values(
      ["task", "method", "non_embedding_params", "d_f", "part", "k"],
      key=lambda c: c.map(order) if c.name == "part" else c,
      ignore_index=True,
    )
  )


def report_lines(table: pd.DataFrame) -> list[str]:
  """The report's layer-locality section (empty when the study has no layer changes or transplants)."""
  changes, transplants = layer_points(table), transplant_points(table)
  lines = []
  if not changes.empty:
    lines += [
      "## Layer locality",
      "",
      "### Relative weight change per block",
      "",
      "`||W_ft - W_base|| / ||W_base||` over each block's projection weights (LoRA and SVF as the model "
      "reads them), averaged over D_f and seeds.",
      "",
      report_lib.markdown_table(changes.drop(columns="N")),
      "",
    ]
  if not transplants.empty:
    lines = lines or ["## Layer locality", ""]
    lines += [
      "### Transplants",
      "",
      "The full fine-tune with its lower (or upper) k blocks reset to the base's weights; part `none` is "
      "the fine-tune itself. If fine-tuning acts on the upper blocks, resetting them loses behaviour "
      "and keeps knowledge. Δ: against the base.",
      "",
      report_lib.markdown_table(transplants.drop(columns="non_embedding_params").rename(columns=TRANSPLANT_METRICS)),
      "",
    ]
  return lines
