"""Published fine-tuning runs of Lin et al. (30 models, 3 datasets, 14 subset sizes), as law points: one dataset's CSV.

    python -m analysis.lin --source LIN --list
    python -m analysis.lin --source LIN --dataset NAME --out FILE.csv [--zero-shot]

Lin et al., "Selecting Large Language Model to Fine-tune via Rectified Scaling Law" (ICML 2024, arXiv 2402.02314;
github.com/linhaowei1/Fine-tuning-Scaling-Law, Apache-2.0 licence) fine-tune 30 public models on subsets of 200 to
1,638,400 examples (doubling) of WMT19, Gigaword and FLAN, and give each model's test loss at each size, and before
fine-tuning (size 0), in benchmark/DATASET.csv: one row a model (`config name`, its Hugging Face id), one column a
subset size, then `size` (the model's parameters) and `family`. `--source` is a clone of that repository (or one
dataset's file from it); nothing is downloaded here. A dataset's CSV has one row per (model, subset size): `model`,
`family`, `N` (the file's `size`: all parameters, embeddings included, as gpt2's 124,439,808; the Switch models' count
every expert), `d_f` (fine-tuning examples), `loss` (the file's test loss), `zero_shot` (the model's loss before
fine-tuning), `dataset` and `source` (the file), sorted by N, model and d_f. The laws need d_f > 0, so the size-0
losses are only the `zero_shot` column, unless `--zero-shot` writes them as rows too. Fit one model's curve with

    python -m analysis.fit --csv FILE.csv --d d_f --y loss --law rectified

(after keeping that model's rows: the models are of different architectures and pretraining, one curve each).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

COLUMNS = ["model", "family", "N", "d_f", "loss", "zero_shot", "dataset", "source"]
MODEL, SIZE, FAMILY = "config name", "size", "family"  # The files' columns besides the subset sizes.


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A dataset of Lin et al.'s: its file in their repository and what it is."""

  path: str
  about: str


DATASETS: dict[str, Dataset] = {
  "flan": Dataset("benchmark/flan.csv", "FLAN (instruction tuning)"),
  "gigaword": Dataset("benchmark/gigaword.csv", "Gigaword (summarisation)"),
  "wmt19": Dataset("benchmark/wmt19.csv", "WMT19 (translation)"),
}


def dataset_file(source: Path, dataset: str) -> Path:
  """The file a dataset is read from: under a clone of Lin et al.'s repository, or `source` if it is that file."""
  path = DATASETS[dataset].path
  if source.is_dir():
    return source / path
  if source.name != Path(path).name:
    raise ValueError(f"--source {source} is not the {dataset} dataset's file; that is {path} (or pass the clone)")
  return source


def _sizes(raw: pd.DataFrame) -> list[str]:
  """The columns of a file that are subset sizes: those named by a whole number."""
  return [c for c in raw.columns if str(c).strip().isdigit()]


def read_dataset(source: str | Path, dataset: str, zero_shot: bool = False) -> pd.DataFrame:
  """One dataset's points: a row per (model, subset size), size 0 too if `zero_shot`; errors name the argument."""
  source = Path(source)
  if dataset not in DATASETS:
    raise ValueError(f"--dataset {dataset!r} is unknown; allowed: {', '.join(DATASETS)}")
  if not source.exists():
    raise ValueError(f"--source {source}: no such file or directory")
  path = dataset_file(source, dataset)
  if not path.is_file():
    raise ValueError(f"--source {source} has no {DATASETS[dataset].path} (the {dataset} dataset's file)")
  raw = pd.read_csv(path)
  missing = [c for c in (MODEL, SIZE, FAMILY) if c not in raw.columns]
  if missing or "0" not in _sizes(raw) or len(_sizes(raw)) < 2:
    what = f"column {missing[0]!r}" if missing else "subset-size columns from 0 up"
    raise ValueError(f"{path} has no {what}: it is not Lin et al.'s {dataset} file")
  if raw[MODEL].duplicated().any():
    raise ValueError(f"{path}: model {raw.loc[raw[MODEL].duplicated(), MODEL].iloc[0]!r} has two rows")
  sizes = _sizes(raw)
  long = raw.melt(id_vars=[MODEL, SIZE, FAMILY], value_vars=sizes, var_name="d_f", value_name="loss")
  long["d_f"] = long["d_f"].astype(int)
  long["loss"] = pd.to_numeric(long["loss"], errors="coerce")
  points = pd.DataFrame(
    {
      "model": long[MODEL].str.strip(),
      "family": long[FAMILY],
      "N": pd.to_numeric(long[SIZE], errors="coerce"),
      "d_f": long["d_f"],
      "loss": long["loss"],
      "zero_shot": long[MODEL].map(dict(zip(raw[MODEL], pd.to_numeric(raw["0"], errors="coerce")))),
      "dataset": dataset,
      "source": DATASETS[dataset].path,
    }
  )
  unknown = ~(np.isfinite(points["N"]) & (points["N"] > 0))
  if unknown.any():
    raise ValueError(f"{path}: no parameter count ({SIZE!r}) for model {points.loc[unknown, 'model'].iloc[0]!r}")
  points = points[np.isfinite(points["loss"]) & (zero_shot | (points["d_f"] > 0))]  # An empty cell: no such run.
  return points.reindex(columns=COLUMNS).sort_values(["N", "model", "d_f"], kind="stable", ignore_index=True)


def _count_text(value: float) -> str:
  """A count for people: 125M, 2.8B, 1.6M."""
  if not math.isfinite(value):
    return "-"
  for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
    if value >= scale:
      return f"{value / scale:.3g}{suffix}"
  return f"{value:.3g}"


def list_datasets(source: str | Path) -> str:
  """A table of the datasets found under `source` (models, points, ranges), then one of their models."""
  source = Path(source)
  if not source.exists():
    raise ValueError(f"--source {source}: no such file or directory")
  names = [d for d in DATASETS if source.is_dir() or source.name == Path(DATASETS[d].path).name]
  if not names:
    files = sorted(Path(d.path).name for d in DATASETS.values())
    raise ValueError(f"--source {source} is no dataset's file; allowed files: {', '.join(files)} (or the clone)")
  header = f"{'dataset':<9} {'models':>6} {'points':>6}  {'N':<13} {'d_f':<11} {'loss':<11} {'zero-shot':<11} about"
  lines, found = [header], []
  for name in names:
    path = dataset_file(source, name)
    if not path.is_file():
      lines.append(f"{name:<9} absent: no {DATASETS[name].path}")
      continue
    points = read_dataset(source, name)
    found.append(points)
    n_range = f"{_count_text(points['N'].min())}-{_count_text(points['N'].max())}"
    d_range = f"{_count_text(points['d_f'].min())}-{_count_text(points['d_f'].max())}"
    loss = f"{points['loss'].min():.3g}-{points['loss'].max():.3g}"
    zero = f"{points['zero_shot'].min():.3g}-{points['zero_shot'].max():.3g}"
    lines.append(
      f"{name:<9} {points['model'].nunique():>6} {len(points):>6}  {n_range:<13} {d_range:<11} {loss:<11} {zero:<11} "
      f"{DATASETS[name].about}"
    )
  if found:
    every = pd.concat(found, ignore_index=True)
    models = every.groupby("model", sort=False).agg(
      family=("family", "first"), N=("N", "first"), datasets=("dataset", lambda d: ",".join(dict.fromkeys(d)))
    )
    width = max(len("model"), *map(len, models.index))
    lines += ["", f"{'model':<{width}} {'N':>7}  {'family':<18} datasets"]
    for model, row in models.sort_values("N", kind="stable").iterrows():
      lines.append(f"{model:<{width}} {_count_text(row['N']):>7}  {row['family']:<18} {row['datasets']}")
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument(
    "--source", required=True, help="A clone of github.com/linhaowei1/Fine-tuning-Scaling-Law, or one dataset's file."
  )
  parser.add_argument("--list", action="store_true", help="Print the datasets and models found, with their ranges.")
  parser.add_argument("--dataset", help=f"The dataset to write: {', '.join(DATASETS)}.")
  parser.add_argument("--out", help="The CSV to write ('-': standard output).")
  parser.add_argument(
    "--zero-shot", action="store_true", help="Also write each model's loss before fine-tuning as a row with d_f = 0."
  )
  args = parser.parse_args(argv)
  if args.list:
    if args.dataset or args.out or args.zero_shot:
      parser.error("--list prints every dataset; leave out --dataset, --out and --zero-shot")
  elif not (args.dataset and args.out):
    parser.error("--dataset and --out are needed (or --list)")
  try:
    if args.list:
      print(list_datasets(args.source))
      return
    points = read_dataset(args.source, args.dataset, args.zero_shot)
  except (ValueError, OSError) as e:  # pandas' parser errors are ValueErrors.
    sys.exit(f"error: {e}")
  if args.out == "-":
    points.to_csv(sys.stdout, index=False)
    return
  Path(args.out).parent.mkdir(parents=True, exist_ok=True)
  points.to_csv(args.out, index=False)
  print(
    f"{args.out}: {len(points)} points of {points['model'].nunique()} models ({args.dataset}; "
    f"N {_count_text(points['N'].min())}-{_count_text(points['N'].max())}, "
    f"d_f {_count_text(points['d_f'].min())}-{_count_text(points['d_f'].max())})"
  )


if __name__ == "__main__":
  main(sys.argv[1:])
