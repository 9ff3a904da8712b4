"""The study report: figures of the fitted laws over the points, residuals, and markdown tables."""

from __future__ import annotations

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from etils import epath  # noqa: E402

from analysis import frames  # noqa: E402
from scaling import grid as grid_lib  # noqa: E402
from scaling import laws  # noqa: E402

X_LABELS = {
  "non_embedding_params": "base non-embedding parameters",
  "pretrain_tokens": "pretraining tokens",
  "trainable_params": "trainable parameters",
}
RUN_COLUMNS = {  # results column -> report header
  "size": "base",
  "non_embedding_params": "N",
  "d_f": "D_f",
  "seed": "seed",
  "metrics.test_loss": "test loss",
  "metrics.knowledge": "knowledge",
  "metrics.behaviour": "behaviour",
  "metrics.heldout_loss": "retention loss",
  "metrics.delta_heldout_loss": "Δ vs base",
  "metrics.cloze_knowledge": "retention knowledge",
  "metrics.delta_cloze_knowledge": "Δ knowledge",
  "train.best_step": "best step",
  "train.hit_step_cap": "hit cap",
}
ZEROSHOT_METRICS = {  # metric -> report header: the world's, then a TFDS task's generation metrics
  "test_loss": "test loss",
  "knowledge": "knowledge",
  "behaviour": "behaviour",
  "value_mass": "value mass",
  "exact_match": "exact match",
  "f1": "token F1",
  "rouge_l": "ROUGE-L",
  "chrf": "chrF",
  "bleu": "BLEU",
}


def _theta(law: laws.Law, fit: dict) -> np.ndarray:
  """Log-space parameters of a fit record (exact even where e^e underflows to 0)."""
  return np.asarray([fit["theta"][p] for p in law.params])


def _log_axes(ax, d_values, xlabel: str) -> None:
  ax.set(xscale="log", yscale="log", xlabel=xlabel, ylabel="test loss (answer tokens)")
  ax.set_xticks(sorted(d_values))
  ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
  for axis in (ax.xaxis, ax.yaxis):
    axis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
  ax.grid(True, which="both", alpha=0.3)


def _save(fig, path: epath.Path) -> None:
  fig.tight_layout()
  with path.open("wb") as f:
    fig.savefig(f, dpi=120)
  plt.close(fig)


def plot_joint(points: pd.DataFrame, fit: dict, path: epath.Path) -> None:
  """Test loss against D_f on log axes, a colour per value of the factor X, the fitted law drawn
  over the points with its bootstrap band."""
  law, axis = laws.get_law(fit["law"]), fit["x"]
  theta = _theta(law, fit)
  fig, ax = plt.subplots(figsize=(6.4, 4.4))
  xs = sorted(points[axis].unique())
  colours = plt.cm.viridis(np.linspace(0.0, 0.85, len(xs)))
  grid = np.geomspace(points["d_f"].min() * 0.8, points["d_f"].max() * 1.25, 100)
  boot = (
    laws.Bootstrap(np.asarray(fit["bootstrap_theta"]), fit["intervals"]["level"]) if "bootstrap_theta" in fit else None
  )
  for colour, x in zip(colours, xs):
    mine = points[points[axis] == x]
    names = ", ".join(sorted(mine["size"].unique())) if "size" in mine else ""
    ax.scatter(mine["d_f"], mine["test_loss"], color=colour, label=f"{names} ({axis}={x:,.0f})", zorder=3)
    x_grid = np.full_like(grid, x)
    ax.plot(grid, law.predict(theta, x_grid, grid), color=colour)
    if boot is not None:
      ax.fill_between(grid, *boot.prediction_interval(law, x_grid, grid), color=colour, alpha=0.15, linewidth=0)
  p = fit["params"]
  band = f", {int(100 * fit['intervals']['level'])}% bootstrap bands" if boot is not None else ""
  law_text = (
    f"{p['A']:.3g}·X^-{p['alpha']:.3f}·D_f^-{p['beta']:.3f} + {p['E']:.3f}"
    if fit["determined"]
    else f"{fit['law']} law, not determined: {', '.join(fit['undetermined'])}"
  )
  ax.set_title(f"{fit['task']} / {fit['method']}: {law_text}{band}", fontsize=9)
  _log_axes(ax, points["d_f"].unique(), "fine-tuning examples D_f")
  ax.legend(title=X_LABELS.get(axis, axis), fontsize=7)
  _save(fig, path)


def plot_residuals(points: pd.DataFrame, fits: list[dict], path: epath.Path) -> None:
  """Observed minus predicted loss against the prediction, one marker per law."""
  fig, ax = plt.subplots(figsize=(6.4, 4.0))
  for fit, marker in zip(fits, "os^D"):
    law = laws.get_law(fit["law"])
    pred = law.predict(_theta(law, fit), points[fit["x"]].to_numpy(float), points["d_f"].to_numpy(float))
    ax.scatter(pred, points["test_loss"] - pred, marker=marker, label=f"{fit['law']} ({fit['formula']})", alpha=0.8)
  ax.axhline(0.0, color="black", linewidth=0.8)
  ax.set(xscale="log", xlabel="predicted test loss", ylabel="observed - predicted")
  ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
  ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
  ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize=7)
  _save(fig, path)


def plot_curves(points: pd.DataFrame, fits: list[dict], path: epath.Path) -> None:
  """Each base model's loss against D_f with the single-factor (dashed) and rectified (solid) fits."""
  fig, ax = plt.subplots(figsize=(6.4, 4.4))
  bases = points.sort_values(["non_embedding_params", "pretrain_tokens"]).drop_duplicates("base")["base"].tolist()
  colours = dict(zip(bases, plt.cm.viridis(np.linspace(0.0, 0.85, len(bases)))))
  grid = np.geomspace(points["d_f"].min() * 0.8, points["d_f"].max() * 1.25, 100)
  for base in bases:
    mine = points[points["base"] == base]
    ax.scatter(mine["d_f"], mine["test_loss"], color=colours[base], label=base, zorder=3)
  for fit in fits:
    law = laws.get_law(fit["law"])
    ax.plot(
      grid,
      law.predict(_theta(law, fit), None, grid),
      color=colours[fit["base"]],
      linestyle="-" if fit["law"] == "rectified" else "--",
    )
  ax.set_title("per base: rectified law (solid) and single-factor law (dashed)", fontsize=9)
  _log_axes(ax, points["d_f"].unique(), "fine-tuning examples D_f")
  ax.legend(title="base model", fontsize=7)
  _save(fig, path)


def param_text(fit: dict, name: str) -> str:
  """A fitted parameter's value, or "not determined" (`laws.undetermined`)."""
  return "not determined" if name in fit["undetermined"] else f"{fit['params'][name]:.4g}"


def fit_row(fit: dict) -> dict:
  v = fit["validation"]
  return {
    "law": fit["law"],
    "parameters": ", ".join(f"{k}={param_text(fit, k)}" for k in fit["params"]),
    "objective": fit["objective"],
    "points": fit["num_points"],
    "Δe (fitted)": v["fitted_error"],
    f"Δh ({v['holdout']})": v["heldout_error"],
    "leave-one-out": v["loo_error"],
    "converged": fit["converged"],
    "off grid": ", ".join(fit["on_grid_edge"]) or "-",
  }


def ranking_lines(fits: list[dict], axis: str) -> list[str]:
  """The joint laws over one factor ranked by held-out relative error (`frames.rank`), with the slopes of their
  residuals and how far each was validated; the best determined one is named."""
  ranked, rows = frames.rank(fits), []
  for f in ranked:
    score, slopes = f["ranking"] or {}, f["residual_slopes"]
    rows.append(
      {
        "law": f["law"],
        "held out": ", ".join(score.get("holdouts", [])) or "-",
        "relative error (mean)": score.get("mean", float("nan")),
        "worst": score.get("worst", float("nan")),
        "determined": "yes" if f["determined"] else f"not determined: {', '.join(f['undetermined'])}",
        f"residual slope / decade of {axis}": slopes.get("x", float("nan")),
        "... of D_f": slopes.get("d", float("nan")),
        "validated range": frames.validated_range(f),
      }
    )
  chosen = next((f["law"] for f in ranked if f["chosen"]), None)
  return [
    "Ranked by held-out relative error, on the holdouts every law allows. A residual slope is the trend of "
    "log(observed / predicted) per decade of the factor: a form that fits has none.",
    "",
    markdown_table(pd.DataFrame(rows)),
    "",
    f"Best determined law by held-out error: {chosen}." if chosen else "No joint law's fit is determined.",
    "",
  ]


def gains_lines(points: pd.DataFrame, axis: str) -> list[str]:
  """What D_f gains each base (`frames.d_gains`), and which joint law's form that trend allows."""
  gains = frames.d_gains(points, axis, "d_f", "test_loss")
  if gains is None:
    return []
  trend = frames.gains_trend(gains)
  verdict = {
    "shrink": "they shrink as it grows, as the multiplicative law has them",
    "grow": "they grow with it, which neither joint law allows: the multiplicative law has them shrink as "
    "the base grows, the additive law keeps them equal",
    "neither": "they neither shrink nor grow steadily with it",
  }[trend]
  shares = frames.d_gains(points, axis, "d_f", "test_loss", log=True)
  share_verdict = {
    "shrink": "they shrink, as the multiplicative law has them where E > 0",
    "grow": "they grow, which the multiplicative law does not allow and the additive law's equal gains do",
    "neither": "they neither shrink nor grow steadily; the multiplicative law keeps them equal where E is 0",
  }[frames.gains_trend(shares)]
  label = X_LABELS.get(axis, axis)
  return [
    f"{gains.name.replace('test_loss', 'Test loss')}, by {label} ({_listed(gains)}): {verdict}. As shares of "
    f"the loss (the log of its ratio: {_listed(shares)}), {share_verdict}.",
    "",
  ]


def _listed(values: pd.Series) -> str:
  return ", ".join(f"{v:.3g}" for v in values)


def markdown_table(df: pd.DataFrame) -> str:
  def cell(v):
    return f"{v:.4g}" if isinstance(v, float) else str(v)

  rows = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
  rows += ["| " + " | ".join(cell(v) for v in r) + " |" for r in df.itertuples(index=False)]
  return "\n".join(rows)


def task_comparison(ft: pd.DataFrame) -> list[str]:
  """Markdown of each method's fine-tunes on every task side by side (means over seeds), where there are several."""
  metrics = {"metrics.knowledge": "knowledge", "metrics.behaviour": "behaviour", "metrics.test_loss": "test loss"}
  metrics = {k: v for k, v in metrics.items() if k in ft}
  lines = []
  for method, group in ft.groupby("method", sort=False):
    tasks = list(dict.fromkeys(group["task"]))
    if len(tasks) < 2 or not metrics:
      continue
    wide = group.pivot_table(index=["non_embedding_params", "size", "d_f"], columns="task", values=list(metrics))
    wide = wide.reset_index().sort_values(["non_embedding_params", "d_f"])
    cols = {("size", ""): "base", ("d_f", ""): "D_f"}
    cols |= {(m, t): f"{name}: {t}" for m, name in metrics.items() for t in tasks}
    table = pd.DataFrame({name: wide[key] for key, name in cols.items()})
    lines += [f"### Tasks side by side: {method}", "", markdown_table(table), ""]
  return lines


def zeroshot_rows(table: pd.DataFrame) -> pd.DataFrame:
  """The zero-shot runs' task, base label, N and metrics (ZEROSHOT_METRICS), by task and N."""
  zs = table[table["kind"] == "zeroshot"] if "kind" in table else table.iloc[:0]
  if zs.empty:
    return pd.DataFrame()
  cols = {"task": "task", "base": "base", "non_embedding_params": "N"}
  cols |= {f"metrics.{m}": name for m, name in ZEROSHOT_METRICS.items() if f"metrics.{m}" in zs}
  zs = zs.assign(base=zs["base"].map(grid_lib.run_label)).sort_values(["task", "non_embedding_params", "base"])
  return zs[list(cols)].rename(columns=cols).reset_index(drop=True)


def zeroshot_lines(table: pd.DataFrame) -> list[str]:
  """The report's table of the bases scored on each task before fine-tuning (none without zero-shot runs)."""
  zs = zeroshot_rows(table)
  if zs.empty:
    return []
  return [
    "## Bases before fine-tuning (zero-shot)",
    "",
    "Each base asked the task's test questions in the task's format, untuned: the point at D_f = 0. Value "
    "mass: the probability that the first answer token is a value of the asked attribute, right or wrong. A "
    "base that knows facts (cloze knowledge above) but cannot be asked in this format has little value mass "
    "and knowledge near 0, and its fine-tunes must teach the format first.",
    "",
    markdown_table(zs),
    "",
  ]


def write_report(
  table: pd.DataFrame, points: pd.DataFrame, fits: list[dict], out: epath.Path, sections: list[str] = ()
) -> epath.Path:
  """Writes the figures and report.md into `out`, with further `sections` (markdown lines) before
  the run tables; returns the report's path."""
  fits = [f for f in fits if f.get("section", "finetune") == "finetune"]
  lines = [
    "# Study report",
    "",
    "Laws are fitted by Hoffmann et al.'s procedure: Huber loss on log-loss residuals, L-BFGS from "
    "a grid of starts. Δe: mean |predicted - observed| on the points fitted; Δh: the same on the "
    "held-out points (the largest factor X, or the largest D_f), predicted by a fit without them; "
    "leave-one-out: each point predicted by a fit without it. A parameter that the points do not determine "
    "(a flat or runaway optimum, a wide interval) reads 'not determined'. Schema of fits.json and the criteria: "
    "see docs/analysis.md.",
    "",
  ]
  for task, method in dict.fromkeys((f["task"], f["method"]) for f in fits):
    pts = points[(points["task"] == task) & (points["method"] == method)]
    lines += [f"## {task} / {method}", ""]
    joint = [f for f in fits if (f["task"], f["method"]) == (task, method) and f["x"]]
    for axis in dict.fromkeys(f["x"] for f in joint):
      pair = [f for f in joint if f["x"] == axis]
      axis_pts = frames.law_rows(pts, axis).groupby(["size", axis, "d_f"], as_index=False)["test_loss"].mean()
      stem = f"{task}_{method}_{axis}"
      multiplicative = [f for f in pair if f["law"] == "multiplicative"]
      if multiplicative:
        plot_joint(axis_pts, multiplicative[0], out / f"fit_{stem}.png")
        lines += [f"![joint fit over {axis}](fit_{stem}.png)", ""]
      plot_residuals(axis_pts, pair, out / f"residuals_{stem}.png")
      lines += [
        f"### Joint laws over {X_LABELS.get(axis, axis)}",
        "",
        markdown_table(pd.DataFrame([fit_row(f) for f in pair])),
        "",
        f"![residuals over {axis}](residuals_{stem}.png)",
        "",
        *ranking_lines(pair, axis),
        *gains_lines(axis_pts, axis),
      ]
    curves = [f for f in fits if (f["task"], f["method"]) == (task, method) and f["base"]]
    if curves:
      plot_curves(pts, curves, out / f"curves_{task}_{method}.png")
      rows = [{"base": f["base"], **fit_row(f)} for f in curves]
      lines += [
        "### Single-factor laws per base model",
        "",
        f"![per-base curves](curves_{task}_{method}.png)",
        "",
        markdown_table(pd.DataFrame(rows)),
        "",
      ]
  lines += [
    *sections,
    "## Fine-tuned runs",
    "",
    "Knowledge: exact-match answers about held-out people. Behaviour: answers in the required "
    "format, right or wrong. Retention: held-out biography loss and cloze knowledge after "
    "fine-tuning, with the change against the base.",
    "",
  ]
  ft = table[table["kind"].isin(grid_lib.FINETUNE_KINDS)].sort_values(
    ["task", "method", "non_embedding_params", "d_f", "seed"]
  )
  lines += task_comparison(ft)
  for (task, method), group in ft.groupby(["task", "method"], sort=False):
    cols = [c for c in RUN_COLUMNS if c in group]
    lines += [f"### {task} / {method}", "", markdown_table(group[cols].rename(columns=RUN_COLUMNS)), ""]
  base = table[table["kind"].isin(grid_lib.BASE_KINDS)].sort_values(["non_embedding_params", "pretrain_tokens"])
  base_cols = {
    "size": "base",
    "kind": "kind",
    "params": "params",
    "non_embedding_params": "N",
    "pretrain_tokens": "tokens",
    "metrics.heldout_loss": "held-out loss",
    "metrics.cloze_knowledge": "cloze knowledge",
  }
  base_cols = {k: v for k, v in base_cols.items() if k in base}  # Real corpora have no cloze probes.
  lines += ["## Base models", "", markdown_table(base[list(base_cols)].rename(columns=base_cols)), ""]
  lines += zeroshot_lines(table)
  path = out / "report.md"
  path.write_text("\n".join(lines))
  return path
