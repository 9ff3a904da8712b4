"""The fine-tuning methods of a study compared: Zhang et al.'s exponents side by side, and forgetting.

- alpha_m per method (variant): the multiplicative law over base parameters N, from the study fits.
- alpha_t per method name and base: the multiplicative law over the method's trainable parameters
  P (LoRA rank, prompt length, ...) and D_f, fitted where a method has several sizes of P. Each
  becomes a fits.json record with `"section": "methods"`.
- Forgetting per method and D_f: test loss, knowledge and behaviour, and the change of held-out
  biography loss and cloze knowledge against the base, averaged over bases and seeds.
The section appears when a study fine-tunes with more than one method.
"""

from __future__ import annotations

import warnings

import pandas as pd

from analysis import frames
from analysis import report as report_lib

FORGETTING = {
  "test_loss": "test loss",
  "knowledge": "knowledge",
  "behaviour": "behaviour",
  "delta_heldout_loss": "Δ held-out loss",
  "delta_cloze_knowledge": "Δ cloze knowledge",
}


def method_points(table: pd.DataFrame) -> pd.DataFrame:
  """Fine-tuned runs averaged over seeds: one row per (task, method, method family, base, P, D_f),
  with the base's name (`frames.base_names`)."""
  if "kind" not in table or not (table["kind"] == "finetune").any():
    return pd.DataFrame()
  ft = table[table["kind"] == "finetune"].rename(columns={"spec.method.name": "method_name"})
  # A method's family: its name and training options; its sizes of P (rank, length) vary within.
  rate = ft["spec.method.learning_rate"] if "spec.method.learning_rate" in ft else pd.Series(None, index=ft.index)
  ft = ft.assign(method_name=[n if pd.isna(r) else f"{n}-lr{r:g}" for n, r in zip(ft["method_name"], rate)])
  keys = ["task", "method", "method_name", "size", "non_embedding_params", "pretrain_tokens", "trainable_params", "d_f"]
  points = (
    ft.groupby(keys, as_index=False, dropna=False)  # An imported base may not say its D_p.
    .agg(**{m: (f"metrics.{m}", "mean") for m in FORGETTING if f"metrics.{m}" in ft})
    .sort_values(keys, ignore_index=True)
  )
  return points.assign(base=frames.base_names(points))


def fit_methods(table: pd.DataFrame, delta: float = 1e-3, bootstrap: int = 200) -> list[dict]:
  """The law over P and D_f for each (task, method family, base) with several sizes of P."""
  points = method_points(table)
  if points.empty or points["method"].nunique() < 2:
    return []
  fits = []
  for (task, name, base), group in points.groupby(["task", "method_name", "base"]):
    # Full tuning's P is the base (or some of its layers), not a size of a parameter-efficient method.
    if name.split("-")[0] == "full" or group["trainable_params"].nunique() < 2:
      continue
    holdout = frames.choose_holdout(group, "multiplicative", "d_f", "trainable_params")
    if holdout is None:
      warnings.warn(
        f"{task}/{name} on {base}: {len(group)} points over P and D_f are too few to fit and validate "
        "the multiplicative law; add sizes of P or D_f",
        stacklevel=2,
      )
      continue
    record = frames.fit_frame(
      group,
      "multiplicative",
      d="d_f",
      y="test_loss",
      x="trainable_params",
      delta=delta,
      bootstrap=bootstrap,
      holdout=holdout,
    )
    fits.append({"section": "methods", "task": task, "method": name, "base": base, "x": "trainable_params", **record})
  return fits


def exponents(fits: list[dict]) -> pd.DataFrame:
  """alpha_m (over N, per method variant) and alpha_t (over P, per method name and base), with beta."""
  rows = []
  for f in fits:
    if f.get("law") != "multiplicative" or f.get("x") not in ("non_embedding_params", "trainable_params"):
      continue
    if f.get("section", "finetune") == "finetune" and f["x"] == "non_embedding_params":
      rows.append({"task": f["task"], "method": f["method"], "over": "N (alpha_m)", "base": "all", **_params(f)})
    elif f.get("section") == "methods":
      rows.append({"task": f["task"], "method": f["method"], "over": "P (alpha_t)", "base": f["base"], **_params(f)})
  return pd.DataFrame(rows)


def _params(f: dict) -> dict:
  """alpha (with its interval), beta and E as the report shows them: "not determined" where the points leave one so."""
  ci, (alpha, beta, e) = f.get("intervals", {}), (report_lib.param_text(f, k) for k in ("alpha", "beta", "E"))
  if "alpha" in ci and "alpha" not in f["undetermined"]:
    alpha += f" [{ci['alpha'][0]:.3g}, {ci['alpha'][1]:.3g}]"
  return {"alpha": alpha, "beta": beta, "E": e, "points": f["num_points"]}


def report_lines(table: pd.DataFrame, fits: list[dict]) -> list[str]:
  """The report's methods section (empty for a study of one method)."""
  points = method_points(table)
  if points.empty or points["method"].nunique() < 2:
    return []
  lines = [
    "## Fine-tuning methods",
    "",
    "Exponents of `L = A * X^-alpha * D_f^-beta + E`: over base parameters N per method (alpha_m), "
    "and over the method's trainable parameters P per base (alpha_t), as Zhang et al. report them.",
    "",
  ]
  table_ = exponents(fits)
  lines += [report_lib.markdown_table(table_) if not table_.empty else "No law could be fitted.", ""]
  columns = [m for m in FORGETTING if m in points]
  forgetting = (
    points.groupby(["task", "method", "d_f"], as_index=False)
    .agg(P=("trainable_params", "mean"), **{m: (m, "mean") for m in columns})
    .rename(columns=FORGETTING)
  )
  lines += [
    "### Forgetting per method and D_f",
    "",
    "Averaged over bases and seeds. Δ: fine-tuned minus base, on held-out biographies (loss) and "
    "cloze questions about held-out people (knowledge); P is averaged over bases.",
    "",
    report_lib.markdown_table(forgetting),
    "",
  ]
  return lines
