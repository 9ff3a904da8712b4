"""The emulated fine-tuning (EFT) analysis of a study's `eft` runs.

- Heatmaps of knowledge, behaviour and test loss over (N1, N2), one panel per beta and D_f; at
  beta = 1 the cells with N1 = N2 are the real fine-tuned models.
- A decoupling fit per metric and beta, `m = c + b1 log N1 + b2 log N2 (+ b3 log D_f)`, by least
  squares with bootstrap intervals: which scale does each metric follow?
- The fraction of the gap closed by up-scaling (N1 > N2), proxy-tuning's measure:
  `(EFT(N1, N2) - FT(N2)) / (FT(N1) - FT(N2))`, from the real fine-tunes at the same D_f.
- The multiplicative law fitted to EFT test loss at beta = 1 with X = N1 and with X = N2 (at a
  single D_f it reduces to the single-factor law over X).
Each becomes a fits.json record with `"section": "eft"`.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from etils import epath  # noqa: E402

from analysis import frames  # noqa: E402
from analysis import report as report_lib  # noqa: E402
from scaling import eft as eft_lib  # noqa: E402
from scaling import grid as grid_lib  # noqa: E402

# The metrics that EFT runs may have (the world's tasks: knowledge and behaviour; a real task: its
# generation metrics and its format check as behaviour); each analysis takes those its runs have.
METRICS = {
  "knowledge": "knowledge (exact match)",
  "behaviour": "behaviour (answer format)",
  "test_loss": "test loss (answer tokens)",
  "exact_match": "exact match (generated answers)",
  "f1": "token F1 (generated answers)",
  "rouge_l": "ROUGE-L (generated answers)",
  "chrf": "chrF (generated answers)",
  "bleu": "BLEU (generated answers)",
}
SCALES = {"n1": "N1 (pretraining scale)", "n2": "N2 (fine-tuning scale)"}
# Zero-shot value mass under which a base can hardly be asked in the task's format: up-scaling
# assumes that p_base(N1) on a question says what N1 knows.
ASKABLE = 0.5


def unaskable_n1(table: pd.DataFrame, task: str) -> list[dict]:
  """The EFT N1 bases of `task` whose zero-shot value mass is under ASKABLE, by N: their size and
  value mass (none without zero-shot runs)."""
  if "metrics.value_mass" not in table:
    return []
  n1 = table.loc[(table["kind"] == "eft") & (table["task"] == task), "base"].unique()
  zs = table[(table["kind"] == "zeroshot") & (table["task"] == task) & table["base"].isin(n1)]
  zs = zs[zs["metrics.value_mass"] < ASKABLE].sort_values("non_embedding_params")
  return [{"size": row["size"], "value_mass": float(row["metrics.value_mass"])} for _, row in zs.iterrows()]


def unaskable_text(base: dict, threshold: float) -> str:
  """Why an N1 base's EFT cells say little about what it knows."""
  return (
    f"N1 base {base['size']} can hardly be asked in the task's format: zero-shot, {base['value_mass']:.0%} of its "
    f"first answer token's probability is on the asked attribute's values (under {threshold:.0%})"
  )


def eft_points(table: pd.DataFrame) -> pd.DataFrame:
  """EFT runs averaged over seeds: one row per (task, method, N1, N2, D_f, beta)."""
  if "kind" not in table or not (table["kind"] == "eft").any():
    return pd.DataFrame()
  e = table[table["kind"] == "eft"]
  keys = [
    "task",
    "method",
    "size",
    "finetune_size",
    "non_embedding_params",
    "finetune_non_embedding_params",
    "d_f",
    "beta",
  ]
  return (
    e.groupby(keys, as_index=False)
    .agg(**{m: (f"metrics.{m}", "mean") for m in METRICS if f"metrics.{m}" in e})
    .rename(columns={"non_embedding_params": "n1", "finetune_non_embedding_params": "n2"})
    .sort_values(keys[:1] + ["n1", "n2", "d_f", "beta"], ignore_index=True)
  )


def measured(points: pd.DataFrame) -> list[str]:
  """The metrics (of METRICS) that a frame of EFT points has."""
  return [m for m in METRICS if m in points]


def decoupling_fit(
  points: pd.DataFrame, metric: str, replicates: int = 1000, level: float = 0.9, seed: int = 0
) -> dict:
  """Least squares of the metric on log N1, log N2 (and log D_f if it varies), with bootstrap
  percentile intervals over the points, and which scale the metric follows."""
  columns = {
    "c": np.ones(len(points)),
    "b1": np.log(points["n1"].to_numpy(float)),
    "b2": np.log(points["n2"].to_numpy(float)),
  }
  if points["d_f"].nunique() > 1:
    columns["b3"] = np.log(points["d_f"].to_numpy(float))
  design = np.stack(list(columns.values()), axis=1)
  y = points[metric].to_numpy(float)
  coef = np.linalg.lstsq(design, y, rcond=None)[0]
  rng = np.random.default_rng(seed)
  draws = []
  for _ in range(replicates):
    rows = rng.integers(0, len(y), len(y))
    draws.append(np.linalg.lstsq(design[rows], y[rows], rcond=None)[0])
  lo, hi = np.percentile(np.asarray(draws), [50 * (1 - level), 50 * (1 + level)], axis=0)
  names = list(columns)
  intervals = {n: [float(lo[i]), float(hi[i])] for i, n in enumerate(names)}
  residual = y - design @ coef
  r2 = 1 - residual.var() / y.var() if y.var() > 0 else float("nan")
  return {
    "coef": {n: float(coef[i]) for i, n in enumerate(names)},
    "intervals": intervals,
    "level": level,
    "replicates": replicates,
    "r2": float(r2),
    "num_points": len(y),
    "follows": follows(coef[1], coef[2], intervals["b1"], intervals["b2"]),
  }


def follows(b1: float, b2: float, ci1: list[float], ci2: list[float]) -> str:
  """'n1', 'n2', 'both' or 'neither': the scales whose coefficient's interval excludes 0; where
  both do, the one at least twice the other's size, else 'both'."""
  sig1, sig2 = ci1[0] > 0 or ci1[1] < 0, ci2[0] > 0 or ci2[1] < 0
  if sig1 and sig2:
    return "n1" if abs(b1) >= 2 * abs(b2) else "n2" if abs(b2) >= 2 * abs(b1) else "both"
  return "n1" if sig1 else "n2" if sig2 else "neither"


def finetune_metrics(table: pd.DataFrame) -> pd.DataFrame:
  """The real fine-tunes' metrics by (task, method, N, D_f), averaged over seeds: the fine-tunes of
  the bases that the EFT runs combine (one pretraining budget, `eft.pretrain_steps`), not others."""
  e = table[table["kind"] == "eft"]
  combined = set(e["base"]) | set(e["spec.finetune_base"])
  ft = table[table["kind"].isin(grid_lib.FINETUNE_KINDS) & table["base"].isin(combined)]
  return ft.groupby(["task", "method", "non_embedding_params", "d_f"], as_index=False).agg(
    **{m: (f"metrics.{m}", "mean") for m in METRICS if f"metrics.{m}" in ft}
  )


def gap_closed_rows(points: pd.DataFrame, finetuned: pd.DataFrame) -> list[dict]:
  """For every up-scaling pair (N1 > N2) at each D_f and beta: the fraction of the FT(N2) ->
  FT(N1) gap that EFT(N1, N2) closes, per metric."""
  ft = {(r.task, r.method, r.non_embedding_params, r.d_f): r for r in finetuned.itertuples()}
  rows = []
  for p in points[points["n1"] > points["n2"]].itertuples():
    small, large = ft.get((p.task, p.method, p.n2, p.d_f)), ft.get((p.task, p.method, p.n1, p.d_f))
    if small is None or large is None:
      continue
    rows.append(
      {
        "n1_size": p.size,
        "n2_size": p.finetune_size,
        "d_f": int(p.d_f),
        "beta": float(p.beta),
        **{
          m: eft_lib.gap_closed(getattr(p, m), getattr(small, m), getattr(large, m))
          for m in measured(points)
          if m in finetuned
        },
      }
    )
  return rows


def fit_eft(table: pd.DataFrame, delta: float = 1e-3, bootstrap: int = 200) -> list[dict]:
  """Every EFT analysis record of a results table (empty if the study has no EFT runs)."""
  points = eft_points(table)
  if points.empty:
    return []
  records = []
  finetuned = finetune_metrics(table)
  for (task, method), group in points.groupby(["task", "method"]):
    cell = {"section": "eft", "task": task, "method": method}
    if doubtful := unaskable_n1(table, task):
      records.append({**cell, "analysis": "unaskable", "threshold": ASKABLE, "bases": doubtful})
    for beta, at_beta in group.groupby("beta"):
      for metric in measured(at_beta):
        if at_beta[metric].notna().all() and len(at_beta) > 4:
          records.append(
            {
              **cell,
              "analysis": "decoupling",
              "metric": metric,
              "beta": float(beta),
              **decoupling_fit(at_beta, metric, replicates=max(bootstrap, 200)),
            }
          )
    gaps = gap_closed_rows(group, finetuned[(finetuned["task"] == task) & (finetuned["method"] == method)])
    if gaps:
      summary = pd.DataFrame(gaps).groupby(["beta", "d_f"], as_index=False)[measured(group)].median()
      records.append({**cell, "analysis": "gap_closed", "pairs": gaps, "median": summary.to_dict(orient="records")})
    plain = group[group["beta"] == 1.0]
    for scale in SCALES:
      if plain[scale].nunique() < 2:
        continue
      points_x = plain.groupby([scale, "d_f"], as_index=False)["test_loss"].mean()
      several = points_x["d_f"].nunique() > 1
      law, d, x = ("multiplicative", "d_f", scale) if several else ("single", scale, None)
      holdout = frames.choose_holdout(points_x, law, d, x)
      if holdout is None:
        continue
      fit = frames.fit_frame(points_x, law, d=d, y="test_loss", x=x, delta=delta, bootstrap=bootstrap, holdout=holdout)
      records.append({**cell, "analysis": "law", "x": scale, **fit})
  return records


def plot_heatmaps(points: pd.DataFrame, metric: str, path: epath.Path) -> None:
  """The metric over (N1, N2): a panel per (D_f, beta), values written in the cells."""
  d_fs, betas = sorted(points["d_f"].unique()), sorted(points["beta"].unique())
  # Rows and columns apart: a study's N1 may be fewer bases than its N2 (eft.pairs).
  rows = points.drop_duplicates("size").sort_values("n1")["size"].tolist()
  cols = points.drop_duplicates("finetune_size").sort_values("n2")["finetune_size"].tolist()
  fig, axes = plt.subplots(
    len(d_fs),
    len(betas),
    figsize=(2.4 * len(betas) + 1.6, 2.4 * len(d_fs) + 0.4),
    squeeze=False,
    sharex=True,
    sharey=True,
    layout="constrained",
  )
  lo, hi = points[metric].min(), points[metric].max()
  cmap = "viridis_r" if metric == "test_loss" else "viridis"  # Bright is good in every panel.
  for r, d_f in enumerate(d_fs):
    for c, beta in enumerate(betas):
      ax = axes[r, c]
      mine = points[(points["d_f"] == d_f) & (points["beta"] == beta)]
      grid = mine.pivot(index="size", columns="finetune_size", values=metric).reindex(index=rows, columns=cols)
      image = ax.imshow(grid.to_numpy(float), origin="lower", cmap=cmap, vmin=lo, vmax=hi)
      for i in range(len(rows)):
        for j in range(len(cols)):
          value = grid.iloc[i, j]
          if np.isfinite(value):
            ax.text(
              j,
              i,
              f"{value:.2f}",
              ha="center",
              va="center",
              fontsize=7,
              color="white" if (value - lo) < 0.5 * (hi - lo) else "black",
            )
      ax.set_xticks(range(len(cols)), cols, fontsize=7, rotation=45)
      ax.set_yticks(range(len(rows)), rows, fontsize=7)
      ax.set_title(f"D_f={int(d_f)}, beta={beta:g}", fontsize=8)
      if r == len(d_fs) - 1:
        ax.set_xlabel("N2: fine-tuned size", fontsize=8)
      if c == 0:
        ax.set_ylabel("N1: base size", fontsize=8)
  fig.colorbar(image, ax=axes, shrink=0.8, label=METRICS[metric])
  fig.suptitle("EFT over (N1 base, N2 fine-tuned); at beta=1, N1 = N2 is the real fine-tune", fontsize=9)
  with path.open("wb") as f:
    fig.savefig(f, dpi=110)
  plt.close(fig)


def report_lines(table: pd.DataFrame, records: list[dict], out: epath.Path) -> list[str]:
  """The report's EFT section, its figures written into `out`."""
  points = eft_points(table)
  if points.empty:
    return []
  lines = [
    "## Emulated fine-tuning",
    "",
    "EFT scores the task with `log p_base(N1) + beta * (log p_ft(N2) - log p_base(N2))`, renormalised "
    "per token. At beta = 1 the cells with N1 = N2 are the real fine-tuned models; N1 > N2 is up-scaling.",
    "",
  ]
  for (task, method), group in points.groupby(["task", "method"]):
    mine = [r for r in records if r.get("section") == "eft" and (r["task"], r["method"]) == (task, method)]
    lines += [f"### {task} / {method}", ""]
    for r in (r for r in mine if r["analysis"] == "unaskable"):
      lines += [
        f"{unaskable_text(base, r['threshold'])}. Its EFT cells measure how well another size's delta teaches it "
        "the format, not what it knows; `eft.pairs` can leave it out as N1.\n"
        for base in r["bases"]
      ]
    for metric in measured(group):
      name = f"eft_{task}_{method}_{metric}.png"
      plot_heatmaps(group, metric, out / name)
      lines += [f"![EFT {metric}]({name})", ""]
    rows = [
      {
        "metric": r["metric"],
        "beta": r["beta"],
        **{
          f"{k} [{int(100 * r['level'])}% CI]": f"{v:.3g} [{r['intervals'][k][0]:.3g}, {r['intervals'][k][1]:.3g}]"
          for k, v in r["coef"].items()
        },
        "R²": r["r2"],
        "follows": SCALES.get(r["follows"], r["follows"]),
      }
      for r in mine
      if r["analysis"] == "decoupling"
    ]
    if rows:
      lines += [
        "#### Which scale each metric follows",
        "",
        "`m = c + b1 log N1 + b2 log N2` (+ `b3 log D_f` when D_f varies), least squares over the "
        "EFT runs at each beta, with bootstrap intervals. A metric follows a scale when that "
        "coefficient's interval excludes 0 (and, if both do, it is at least twice the other).",
        "",
        report_lib.markdown_table(pd.DataFrame(rows)),
        "",
      ]
    for r in (r for r in mine if r["analysis"] == "gap_closed"):
      lines += [
        "#### Gap closed by up-scaling",
        "",
        "`(EFT(N1, N2) - FT(N2)) / (FT(N1) - FT(N2))` for N1 > N2: 1 means EFT matches the large "
        "fine-tune, 0 the small one. Median over pairs:",
        "",
        report_lib.markdown_table(pd.DataFrame(r["median"])),
        "",
        "Every pair:",
        "",
        report_lib.markdown_table(pd.DataFrame(r["pairs"])),
        "",
      ]
    laws = [r for r in mine if r["analysis"] == "law"]
    if laws:
      lines += [
        "#### Laws of EFT test loss (beta = 1)",
        "",
        report_lib.markdown_table(pd.DataFrame([{"X": SCALES[r["x"]], **report_lib.fit_row(r)} for r in laws])),
        "",
      ]
  return lines
