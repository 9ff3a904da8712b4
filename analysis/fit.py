"""Fits the multiplicative fine-tuning law to a study's results and writes the report.

    python -m analysis.fit --workdir runs/smoke

For every (task, method) the fine-tuned test loss, averaged over seeds, is fitted as
L(N, D_f) = A * N^-alpha * D_f^-beta + E, with N the base's non-embedding parameters.
"""

from __future__ import annotations

import argparse
import sys

import pandas as pd
from etils import epath

from analysis import report as report_lib
from scaling import laws, results

X_COLUMN = "non_embedding_params"


def finetune_points(table: pd.DataFrame) -> pd.DataFrame:
  """Fine-tuned runs averaged over seeds: one row per (task, method, size, N, D_f)."""
  ft = table[table["kind"] == "finetune"]
  keys = ["task", "method", "size", X_COLUMN, "d_f"]
  return (ft.groupby(keys, as_index=False)
          .agg(test_loss=("metrics.test_loss", "mean"), seeds=("seed", "count"))
          .sort_values(keys, ignore_index=True))


def fit_study(table: pd.DataFrame, delta: float = 1e-3) -> list[dict]:
  """The multiplicative law fitted per (task, method) of a results table."""
  fits = []
  for (task, method), group in finetune_points(table).groupby(["task", "method"]):
    fit = laws.fit("multiplicative", group["d_f"], group["test_loss"], x=group[X_COLUMN], delta=delta)
    fits.append({"task": task, "method": method, "x": X_COLUMN, "huber_delta": delta, **fit.to_json()})
  return fits


def fit_and_report(workdir: str | epath.Path, delta: float = 1e-3) -> list[dict]:
  """Fits the study in `workdir`, writes report/ (fits.json, figure, report.md) and prints the fits."""
  workdir = epath.Path(workdir)
  table = results.load_table(workdir)
  if table.empty or not (table["kind"] == "finetune").any():
    raise SystemExit(f"no finished fine-tuning runs in {workdir}/runs")
  fits = fit_study(table, delta)
  out = workdir / "report"
  out.mkdir(parents=True, exist_ok=True)
  results.write_json(out / "fits.json", fits)
  path = report_lib.write_report(table, finetune_points(table), fits, out)
  for f in fits:
    p = f["params"]
    print(f"{f['task']}/{f['method']}: L = {p['A']:.4g} * N^-{p['alpha']:.4f} * D_f^-{p['beta']:.4f} + {p['E']:.4f}"
          f"  (A={p['A']:.4g}, alpha={p['alpha']:.4f}, beta={p['beta']:.4f}, E={p['E']:.4f};"
          f" {f['num_points']} points, objective {f['objective']:.3g})")
  print(f"report: {path}")
  return fits


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True, help="A study's workdir (local path or gs://).")
  parser.add_argument("--huber-delta", type=float, default=1e-3, help="Huber delta of the log-space objective.")
  args = parser.parse_args(argv)
  fit_and_report(args.workdir, args.huber_delta)


if __name__ == "__main__":
  main(sys.argv[1:])
