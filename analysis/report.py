"""The study report: a figure of the fitted law over the points, and markdown tables."""

from __future__ import annotations

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from etils import epath  # noqa: E402

from scaling import laws  # noqa: E402

RUN_COLUMNS = {  # results column -> report header
    "size": "base", "non_embedding_params": "N", "d_f": "D_f", "seed": "seed",
    "metrics.test_loss": "test loss", "metrics.knowledge": "knowledge", "metrics.behaviour": "behaviour",
    "metrics.heldout_loss": "retention loss", "metrics.delta_heldout_loss": "Δ vs base",
    "metrics.cloze_knowledge": "retention knowledge", "metrics.delta_cloze_knowledge": "Δ knowledge",
    "train.best_step": "best step", "train.hit_step_cap": "hit cap"}


def plot_fit(points: pd.DataFrame, fit: dict, path: epath.Path) -> None:
  """Test loss against D_f on log axes, one colour per base size, the fitted law drawn over them."""
  law = laws.get_law(fit["law"])
  fig, ax = plt.subplots(figsize=(6.4, 4.4))
  sizes = points.drop_duplicates("size").sort_values("non_embedding_params")
  colours = plt.cm.viridis(np.linspace(0.0, 0.85, len(sizes)))
  grid = np.geomspace(points["d_f"].min() * 0.8, points["d_f"].max() * 1.25, 100)
  theta = np.asarray([np.log(fit["params"][p.upper()]) if p in law.exp_params else fit["params"][p]
                      for p in law.params])
  for colour, (_, row) in zip(colours, sizes.iterrows()):
    mine = points[points["size"] == row["size"]]
    label = f"{row['size']} (N={row['non_embedding_params']:,})"
    ax.scatter(mine["d_f"], mine["test_loss"], color=colour, label=label, zorder=3)
    ax.plot(grid, law.predict(theta, np.full_like(grid, row["non_embedding_params"]), grid), color=colour)
  p = fit["params"]
  ax.set(xscale="log", yscale="log", xlabel="fine-tuning examples D_f", ylabel="test loss (answer tokens)",
         title=f"{fit['task']} / {fit['method']}: {p['A']:.3g}·N^-{p['alpha']:.3f}·D_f^-{p['beta']:.3f} + {p['E']:.3f}")
  ax.set_xticks(sorted(points["d_f"].unique()))
  ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
  for axis in (ax.xaxis, ax.yaxis):
    axis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
  ax.legend(title="base model", fontsize=8)
  ax.grid(True, which="both", alpha=0.3)
  fig.tight_layout()
  with path.open("wb") as f:
    fig.savefig(f, dpi=120)
  plt.close(fig)


def _markdown(df: pd.DataFrame) -> str:
  def cell(v):
    return f"{v:.4g}" if isinstance(v, float) else str(v)

  rows = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
  rows += ["| " + " | ".join(cell(v) for v in r) + " |" for r in df.itertuples(index=False)]
  return "\n".join(rows)


def write_report(table: pd.DataFrame, points: pd.DataFrame, fits: list[dict], out: epath.Path) -> epath.Path:
  """Writes the figures and report.md into `out`; returns the report's path."""
  lines = ["# Study report", "", "## Fitted laws", ""]
  fit_rows = []
  for fit in fits:
    name = f"fit_{fit['task']}_{fit['method']}.png"
    plot_fit(points[(points["task"] == fit["task"]) & (points["method"] == fit["method"])], fit, out / name)
    lines += [f"![{fit['task']} / {fit['method']}]({name})", ""]
    fit_rows.append({"task": fit["task"], "method": fit["method"], "law": fit["formula"], **fit["params"],
                     "objective": fit["objective"], "points": fit["num_points"], "converged": fit["converged"]})
  lines += [_markdown(pd.DataFrame(fit_rows)), "", "## Fine-tuned runs", "",
            "Knowledge: exact-match answers about held-out people. Behaviour: answers in the required "
            "format, right or wrong. Retention: held-out biography loss and cloze knowledge after "
            "fine-tuning, with the change against the base.", ""]
  ft = table[table["kind"] == "finetune"].sort_values(["task", "method", "non_embedding_params", "d_f", "seed"])
  for (task, method), group in ft.groupby(["task", "method"], sort=False):
    cols = [c for c in RUN_COLUMNS if c in group]
    lines += [f"### {task} / {method}", "", _markdown(group[cols].rename(columns=RUN_COLUMNS)), ""]
  base = table[table["kind"] == "pretrain"].sort_values("non_embedding_params")
  base_cols = {"size": "base", "params": "params", "non_embedding_params": "N", "pretrain_tokens": "tokens",
               "metrics.heldout_loss": "held-out loss", "metrics.cloze_knowledge": "cloze knowledge"}
  lines += ["## Base models", "", _markdown(base[list(base_cols)].rename(columns=base_cols)), ""]
  path = out / "report.md"
  path.write_text("\n".join(lines))
  return path
