"""Fits scaling laws: to a study's results, or to any CSV.

    python -m analysis.fit --workdir runs/smoke
    python -m analysis.fit --csv FILE --x COL --d COL [--u COL] --y COL --law NAME|auto \
        [--huber-delta F] [--bootstrap N] [--holdout largest_d|largest_x|none] [--predict x=N,d=D ...] [--json OUT]

For a study, the fine-tuned test loss of every (task, method), averaged over seeds, is fitted by
the multiplicative law L(X, D_f) = A * X^-alpha * D_f^-beta + E, and the additive, overtrained and
Kaplan laws beside it (ranked by held-out error), for each factor X the study varies (base
non-embedding parameters N at one D_p, pretraining tokens D_p at one N, trainable parameters P where
a base has several); and each base's curve over D_f (a base: a size at a D_p) by the single-factor
and rectified laws. Every fit reports held-out errors (the largest X held out, or the largest D_f
where the rest would not determine the law), leave-one-out error, and the parameters its points do
not determine.
For a CSV, `--d` is the data column, `--x` the other scaling factor (omit it for a single-factor
law), `--u` the unique data (the data-constrained law) and `--y` the loss; `--law auto` fits every law
those columns feed and ranks them by held-out error. `--predict x=N,d=D` prints the law's loss there,
with a warning where the point lies beyond the range the law was validated on.
`analysis.frames.fit_frame` and `fit_laws` do the same for a pandas DataFrame in your own scripts.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import warnings

import numpy as np
import pandas as pd
from etils import epath

from analysis import eft as eft_analysis
from analysis import frames
from analysis import locality as locality_analysis
from analysis import methods as methods_analysis
from analysis import report as report_lib
from scaling import grid as grid_lib
from scaling import kinds, laws, results
from scaling import run as run_lib

# Scaling factors a study may vary, by results column.
X_AXES = {
  "non_embedding_params": "base parameters N",
  "pretrain_tokens": "pretraining tokens D_p",
  "trainable_params": "trainable parameters P",
}
JOINT_LAWS, CURVE_LAWS = ("multiplicative", "additive", "overtrained", "kaplan"), ("single", "rectified")
RANKED_ONLY = ("overtrained", "kaplan")  # Joint laws a study fits to rank: bootstrapped with fewer replicates.
RANKED_ONLY_BOOTSTRAP = 20


def finetune_points(table: pd.DataFrame) -> pd.DataFrame:
  """Fine-tuned runs averaged over seeds: one row per (task, method, size, factors, D_f).

  Runs whose test loss is not finite (diverged) are left out, with a warning that names them.
  """
  ft = table[table["kind"].isin(grid_lib.FINETUNE_KINDS)]  # Trained here or imported.
  bad = ~np.isfinite(pd.to_numeric(ft["metrics.test_loss"], errors="coerce"))
  if bad.any():
    warnings.warn(
      f"excluded {int(bad.sum())} runs with a non-finite test loss: {sorted(ft.loc[bad, 'id'])}", stacklevel=2
    )
    ft = ft[~bad]
  ft = ft.assign(pretrain_tokens=budget_tokens(table, ft))
  keys = ["task", "method", "size", *X_AXES, "d_f"]
  points = (
    ft.groupby(keys, as_index=False, dropna=False)  # An imported base may not say its D_p.
    .agg(test_loss=("metrics.test_loss", "mean"), seeds=("seed", "count"))
    .sort_values(keys, ignore_index=True)
  )
  points["base"] = frames.base_names(points)
  return points


def budget_tokens(table: pd.DataFrame, ft: pd.DataFrame) -> pd.Series:
  """Each fine-tune's D_p: its base's tokens, averaged over the bases pretrained here at its size and budget (a
  pretraining seed's documents pack into a few more or fewer tokens); an imported base's as its entry says."""
  if "base" not in ft or "spec.train.max_steps" not in table:
    return ft["pretrain_tokens"]
  bases = table[table["kind"] == "pretrain"]
  mean = bases.groupby(["size", "spec.train.max_steps"])["pretrain_tokens"].transform("mean")
  return ft["base"].map(dict(zip(bases["id"], mean))).fillna(ft["pretrain_tokens"])


def fit_study(table: pd.DataFrame, delta: float = 1e-3, bootstrap: int = 200) -> list[dict]:
  """Every law fitted to a results table: the joint laws per (task, method) and varied factor,
  the single-factor laws per base model's D_f curve; each with held-out errors."""
  fits = []
  for (task, method), group in finetune_points(table).groupby(["task", "method"]):
    for axis in varied_axes(group):
      points = law_points(group, axis)
      for law in JOINT_LAWS:
        holdouts = frames.holdouts(points, law, "d_f", axis)  # The first is the report's; all rank the laws.
        if not holdouts:
          warnings.warn(
            f"{task}/{method}: {len(points)} points over {axis} and D_f are too few to fit and "
            f"validate the {law} law; add base sizes or D_f",
            stacklevel=2,
          )
          continue
        replicates = min(bootstrap, RANKED_ONLY_BOOTSTRAP) if law in RANKED_ONLY else bootstrap
        record = frames.fit_frame(
          points, law, d="d_f", y="test_loss", x=axis, delta=delta, bootstrap=replicates, holdout=holdouts
        )
        fits.append({"task": task, "method": method, "x": axis, "base": None, **record})
    for base, curve in group.groupby("base"):
      for law in CURVE_LAWS:
        if frames.choose_holdout(curve, law, "d_f"):
          record = frames.fit_frame(curve, law, d="d_f", y="test_loss", delta=delta, holdout="largest_d")
          fits.append({"task": task, "method": method, "x": None, "base": base, **record})
  return fits


def varied_axes(group: pd.DataFrame) -> list[str]:
  """The factors of X_AXES that a (task, method)'s points vary; P only where it is not a function of
  N (one P per base: its law would be the law over N, relabelled)."""
  axes = [a for a in X_AXES if group[a].nunique() > 1]
  if "trainable_params" in axes and (group.groupby("non_embedding_params")["trainable_params"].nunique() <= 1).all():
    axes.remove("trainable_params")
  return axes


def law_points(group: pd.DataFrame, axis: str) -> pd.DataFrame:
  """The (axis, d_f, test_loss) points of a joint law over `axis` (`law_rows`), averaged over seeds."""
  return frames.law_rows(group, axis).groupby([axis, "d_f"], as_index=False)["test_loss"].mean()


def of_study(table: pd.DataFrame, workdir: epath.Path) -> pd.DataFrame:
  """The finished runs of the study last planned in `workdir` (all, without a study.json): a workdir keeps
  the runs of other versions of its study, which the report leaves out, saying how many."""
  ids = kinds.planned_ids(workdir)
  if ids is None or table.empty:
    return table
  mine = table["id"].isin(ids)
  if not mine.all():
    print(
      f"report: {int((~mine).sum())} finished runs in {workdir}/runs are not of its study.json's study; left out",
      flush=True,
    )
  return table[mine].reset_index(drop=True)


def fit_and_report(workdir: str | epath.Path, delta: float = 1e-3, bootstrap: int = 200) -> list[dict]:
  """Fits the study in `workdir`, writes report/ (fits.json, figures, report.md) and prints the fits."""
  workdir = epath.Path(workdir)
  table = of_study(results.load_table(workdir), workdir)
  if table.empty or not table["kind"].isin(grid_lib.FINETUNE_KINDS).any():
    raise SystemExit(f"no finished fine-tuning runs in {workdir}/runs")
  out = workdir / "report"
  # The fits are a function of the points and the settings: unchanged inputs are not refitted.
  points = finetune_points(table)
  sources = [
    points,
    eft_analysis.eft_points(table),
    locality_analysis.layer_points(table),
    locality_analysis.transplant_points(table),
    report_lib.zeroshot_rows(table),
  ]
  inputs = f"{'|'.join(p.to_csv() for p in sources)}|{delta}|{bootstrap}|{laws.__doc__}"
  key = hashlib.sha256(inputs.encode()).hexdigest()
  if (out / "inputs.sha256").exists() and (out / "inputs.sha256").read_text() == key and (out / "fits.json").exists():
    fits, path = json.loads((out / "fits.json").read_text()), out / "report.md"
  else:
    with warnings.catch_warnings():
      warnings.filterwarnings("ignore", message=".*outside the starting grid")  # Recorded in on_grid_edge.
      fits = [{"section": "finetune", **f} for f in fit_study(table, delta, bootstrap)]
      fits += eft_analysis.fit_eft(table, delta, bootstrap)
      fits += methods_analysis.fit_methods(table, delta, bootstrap)
    out.mkdir(parents=True, exist_ok=True)
    results.write_json(out / "fits.json", fits)
    sections = (
      methods_analysis.report_lines(table, fits)
      + locality_analysis.report_lines(table)
      + eft_analysis.report_lines(table, fits, out)
    )
    path = report_lib.write_report(table, points, fits, out, sections)
    (out / "inputs.sha256").write_text(key)
  for line in summary_lines(fits):
    print(line)
  print(f"report: {path}")
  return fits


def summary_lines(fits: list[dict]) -> list[str]:
  """What a fitted study prints: each multiplicative law over a factor, and each EFT decoupling verdict
  (every metric at every beta)."""
  lines = []
  for f in fits:
    if f["section"] == "eft" and f["analysis"] == "unaskable":
      lines += [f"EFT {f['task']}/{f['method']}: {eft_analysis.unaskable_text(b, f['threshold'])}" for b in f["bases"]]
    if f["section"] == "eft" and f["analysis"] == "decoupling":
      c, ci = f["coef"], f["intervals"]
      lines.append(
        f"EFT {f['task']}/{f['method']} {f['metric']} at beta {f['beta']:g}: b1 (log N1) = {c['b1']:.3g} "
        f"[{ci['b1'][0]:.3g}, {ci['b1'][1]:.3g}], b2 (log N2) = {c['b2']:.3g} [{ci['b2'][0]:.3g}, "
        f"{ci['b2'][1]:.3g}]: follows {eft_analysis.SCALES.get(f['follows'], f['follows'])}"
      )
    if f["section"] in ("finetune", "methods") and f["law"] == "multiplicative" and f["x"]:
      base = f" on {f['base']}" if f["base"] else ""
      values = ", ".join(f"{k}={report_lib.param_text(f, k)}" for k in f["params"])
      lines.append(
        f"{f['task']}/{f['method']}{base} over {f['x']}: L = A * X^-alpha * D_f^-beta + E  ({values};"
        f" {f['num_points']} points; held-out error {f['validation']['heldout_error']:.4g})"
      )
  return lines


def format_fit(record: dict) -> str:
  """One readable block: the law, each parameter with its interval (or "not determined", and why), the errors,
  the validated range and the slopes of the residuals."""
  lines = [
    f"{record['law']}: {record['formula']}  ({record['num_points']} points, objective "
    f"{record['objective']:.4g}, converged {record['converged']})"
  ]
  intervals, undetermined = record.get("intervals", {}), record["undetermined"]
  width = max(6, *map(len, record["params"]))
  for name, value in record["params"].items():
    if name in undetermined:
      lines.append(f"  {name:>{width}} = not determined ({undetermined[name]})")
      continue
    ci = f"  [{intervals[name][0]:.4g}, {intervals[name][1]:.4g}]" if name in intervals else ""
    lines.append(f"  {name:>{width}} = {value:.6g}{ci}")
  for v in frames.validations(record):
    held = "n/a" if v["heldout_error"] is None else f"{v['heldout_error']:.4g}"
    lines.append(
      f"  Delta_e {v['fitted_error']:.4g}, Delta_h ({v['holdout']}) {held}, leave-one-out {v['loo_error']:.4g}"
    )
  if "validation" in record:
    lines.append(f"  validated range: {frames.validated_range(record)}")
  slopes = ", ".join(f"{k} {s:+.3g}" for k, s in record["residual_slopes"].items())
  lines.append(f"  residual slope (log observed / predicted per decade): {slopes}")
  return "\n".join(lines)


def format_ranking(records: list[dict]) -> str:
  """The ranked laws (`frames.rank`): held-out relative error, whether determined, and the chosen one."""
  lines = ["laws ranked by held-out relative error:"]
  for i, r in enumerate(records, 1):
    score = r["ranking"]
    error = (
      f"mean {score['mean']:<8.3g} worst {score['worst']:<8.3g} ({', '.join(score['holdouts'])} held out)"
      if score
      else "not validated"
    )
    state = "determined" if r["determined"] else f"not determined: {', '.join(r['undetermined'])}"
    lines.append(f"  {i if score else '-':>2}. {r['law']:<17} {error}  {state}{'  <- chosen' if r['chosen'] else ''}")
  chosen = next((r["law"] for r in records if r["chosen"]), None)
  lines.append(
    f"chosen: {chosen}, the best determined fit" if chosen else "chosen: none; no validated fit is determined"
  )
  return "\n".join(lines)


def format_prediction(record: dict, point: dict[str, float]) -> str:
  """The law's loss at a point, with its bootstrap band; a warning for each input beyond the validated range."""
  out = frames.predict(record, point)
  at = ", ".join(f"{k}={v:g}" for k, v in point.items())
  band = f"  [{out['band'][0]:.4g}, {out['band'][1]:.4g}]" if "band" in out else ""
  state = "" if record["determined"] else f"; not determined: {', '.join(record['undetermined'])}"
  for k, ratio in out["beyond"].items():
    warnings.warn(
      f"{k}={point[k]:g} lies beyond the validated range: {ratio:.3g}x the largest {k} validated "
      f"({out['validated_max'][k]:.4g}); the {record['law']} law was never checked this far",
      stacklevel=2,
    )
  return f"prediction at {at}: L = {out['prediction']:.4g}{band}  ({record['law']} law{state})"


def _point(text: str) -> dict[str, float]:
  """--predict's 'x=1e6,d=640' as {'x': 1e6, 'd': 640.0}."""
  point = {}
  for part in text.split(","):
    key, _, value = (t.strip() for t in part.partition("="))
    try:
      number = float(value)
    except ValueError:
      number = float("nan")
    if key not in laws.INPUTS or not (np.isfinite(number) and number > 0):
      raise argparse.ArgumentTypeError(
        f"{part!r} in {text!r}; allowed: key=value with a key of {', '.join(laws.INPUTS)} and a positive value"
      )
    point[key] = number
  return point


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument("--workdir", help="A study's workdir (local path or gs://).")
  source.add_argument("--csv", help="A CSV file of points to fit.")
  parser.add_argument("--x", help="CSV column of the second scaling factor (joint laws).")
  parser.add_argument("--d", help="CSV column of the data size.")
  parser.add_argument("--u", help="CSV column of the unique data (the data_constrained law).")
  parser.add_argument("--y", help="CSV column of the loss.")
  parser.add_argument(
    "--law",
    choices=[*sorted(laws.LAWS), "auto"],
    help="The law of a CSV's fit (default multiplicative); auto: every law the columns feed, ranked.",
  )
  parser.add_argument(
    "--huber-delta",
    type=float,
    default=1e-3,
    help="Huber delta of the log-space objective; large (say 10) means least squares.",
  )
  parser.add_argument(
    "--bootstrap", type=int, help="Bootstrap replicates for intervals (CSV default 0: none; study default 200)."
  )
  parser.add_argument(
    "--holdout",
    choices=["largest_d", "largest_x", "none"],
    help="The points a CSV's fit is validated on (default largest_d).",
  )
  parser.add_argument(
    "--predict",
    action="append",
    type=_point,
    help="A point to predict the loss at, as x=N,d=D (and u=U): the law's inputs. Repeatable.",
  )
  parser.add_argument("--json", help="Write the CSV's fit record (with --law auto, every law's) here.")
  args = parser.parse_args(argv)
  run_lib.setup_runtime()
  warnings.formatwarning = lambda message, *_, **__: f"warning: {message}\n"
  if args.workdir:
    csv_only = [f"--{k}" for k in ("x", "d", "u", "y", "law", "holdout", "predict", "json") if getattr(args, k)]
    if csv_only:
      parser.error(f"{', '.join(csv_only)} apply to --csv; a study's laws, holdouts and fits.json are its report's")
    if args.bootstrap is not None and args.bootstrap < 1:
      parser.error(
        f"--bootstrap={args.bootstrap} with --workdir; allowed: 1 or more (the report's intervals; default 200)"
      )
    fit_and_report(args.workdir, args.huber_delta, 200 if args.bootstrap is None else args.bootstrap)
    return
  if not (args.d and args.y):
    parser.error("--csv needs --d and --y (and --x for a joint law)")
  if args.law == "auto" and args.holdout:
    parser.error("--holdout with --law auto; auto holds out the largest x and the largest d in turn")
  if args.predict and args.holdout == "none":
    parser.error("--predict with --holdout none; a prediction is checked against the range the law was validated on")
  try:
    frame = pd.read_csv(args.csv)
  except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
    sys.exit(f"error: --csv {args.csv}: cannot read it ({getattr(e, 'strerror', None) or e})")
  frame.index = pd.RangeIndex(2, len(frame) + 2, name="line")  # Errors name the file's line (1 is the header).
  try:
    if args.law == "auto":
      records = frames.fit_laws(frame, args.d, args.y, args.x, args.u, args.huber_delta, args.bootstrap or 0)
      print(format_ranking(records))
      record = next((r for r in records if r["chosen"]), records[0])
    else:
      holdout = args.holdout or "largest_d"
      record = frames.fit_frame(
        frame,
        args.law or "multiplicative",
        args.d,
        args.y,
        args.x,
        args.huber_delta,
        args.bootstrap or 0,
        None if holdout == "none" else holdout,
        u=args.u,
      )
    print(format_fit(record))
    for point in args.predict or []:
      print(format_prediction(record, point))
  except ValueError as e:
    sys.exit(f"error: {e}")
  if args.json:
    results.write_json(args.json, records if args.law == "auto" else record)


if __name__ == "__main__":
  main(sys.argv[1:])
