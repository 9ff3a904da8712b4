"""Published pretraining runs from IBM's ColPret collection, as points for the laws: one family's CSV.

    python -m analysis.colpret --source COLPRET --list
    python -m analysis.colpret --source COLPRET --family NAME --out FILE.csv [--checkpoints final|all] [--metric COL]

ColPret (github.com/IBM/ColPret, MIT licence; Choshen, Zhang and Andreas, "A Hitchhiker's Guide to Scaling Law
Estimation", arXiv 2410.11840) gathers the losses of public model families as its authors collected them.
`--source` is a clone of that repository (or one family's file from it); nothing is downloaded here. A family's
CSV has one row per (model, training length): `N` parameters, `D` tokens trained on, `U` unique tokens the run
saw (min(D, the corpus's tokens) where the family records its corpus; empty elsewhere), `loss` in nats (the
log of a perplexity where the family records perplexity), and identifying columns: `family`, `model`, `data`,
`step`, `metric` (the source column of `loss`), `source` (the file). By default each model's final checkpoint
(its largest D); `--checkpoints all` writes every checkpoint, so D varies within a model. Fit it with

    python -m analysis.fit --csv FILE.csv --x N --d D --y loss --law additive --holdout largest_x

(`--d N` without `--x` for a single-factor law over N, where a family trained every size on one D).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

COLUMNS = ["family", "model", "N", "D", "U", "loss", "data", "step", "metric", "source"]

# OPT's tokens per step by size (the OPT paper's table 1, as ColPret's read_data.get_opt_trajectories).
OPT_BATCH = {"125m": 0.5e6, "1.3b": 1e6, "6.7b": 2e6, "13b": 4e6, "30b": 4e6, "175b": 2e6}
OPT_CORPUS = 180e9  # Unique tokens of OPT's corpus (ColPret's tokens_per_epoch).
# GPT-3's sizes (ColPret's raw_data/gpt3/gpt3_metadata.xlsx: the GPT-3 paper's table 2.1).
GPT3_PARAMS = {
  "small": 125e6,
  "medium": 350e6,
  "large": 760e6,
  "xl": 1.3e9,
  "2.7b": 2.7e9,
  "6.7b": 6.7e9,
  "13b": 13e9,
  "175b": 175e9,
}
# Pile-T5's sizes and tokens per step (ColPret's read_data.get_t5).
T5_PARAMS = {"base": 247586304, "large": 783173632, "xl": 2849804288, "xxl": 11135426560}
T5_TOKENS_PER_STEP = 1e6
# Unique tokens where ColPret's datablations_contour_losses.csv has a wrong epoch count: 2b855b1b25 is 2.8B parameters,
# 55B tokens, 1.25B unique (44 epochs; the same run's curve in datablations_losses.csv ends at its loss), not 2.204.
DATABLATIONS_UNIQUE = {"2b855b1b25": 1.25e9}
# OLMo's tokens per step: 2048-token sequences, 2048 (1B) or 2160 (7B) a batch (the OLMo paper; the 7B checkpoints'
# revision names agree). ColPret's read_data.get_olmo takes 4M for both.
OLMO_TOKENS_PER_STEP = {"OLMo-1B": 2048 * 2048, "OLMo-7B": 2160 * 2048, "OLMo-7B-Twin-2T": 2160 * 2048}
# OLMo-1B logs the Pile's validation loss under another name than the 7B models.
OLMO_PILE = ("pile-validation/CrossEntropyLoss", "pile/CrossEntropyLoss")


def count(text) -> float:
  """A count written as a number or with a k/m/b/t suffix ('125m', '2.8B') as a float."""
  match = re.fullmatch(r"\s*([0-9.]+(?:e[+-]?[0-9]+)?)\s*([kmbt]?)\s*", str(text), re.IGNORECASE)
  if not match:
    raise ValueError(f"not a count: {text!r}")
  return float(match[1]) * {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}[match[2].lower()]


def _points(raw: pd.DataFrame, metric_values: pd.Series, log: bool, **columns) -> pd.DataFrame:
  """The standard frame from a raw file's columns; `log` takes the log of a perplexity."""
  values = pd.to_numeric(metric_values, errors="coerce")
  out = pd.DataFrame(columns, index=raw.index)
  out["loss"] = np.log(values) if log else values
  return out


def _opt(raw: pd.DataFrame, metric: str) -> pd.DataFrame:
  """OPT's validation perplexity along training (Xia et al., "Training Trajectories of Language Models")."""
  size = raw["model_size"].str.lower()
  tokens = raw["steps"] * size.map(OPT_BATCH)
  return _points(
    raw,
    raw[metric],
    log=True,
    model="OPT-" + size,
    N=size.map(count),
    D=tokens,
    U=np.minimum(tokens, OPT_CORPUS),
    data="OPT corpus",
    step=raw["steps"],
  )


def _gpt3(raw: pd.DataFrame, metric: str) -> pd.DataFrame:
  """GPT-3's loss curves, digitised from the paper's figure; `step` there is billions of tokens."""
  return _points(
    raw,
    raw[metric],
    log=False,
    model="GPT-3-" + raw["model"],
    N=raw["model"].map(GPT3_PARAMS),
    D=raw["step"] * 1e9,
    data="GPT-3 mix",
  )


def _t5_pile(raw: pd.DataFrame, metric: str) -> pd.DataFrame:
  """Pile-T5 (EleutherAI): the log of its inference-eval perplexity, 0.054-0.055 times its eval loss per token."""
  return _points(
    raw,
    raw[metric],
    log=True,
    model="pile-t5-" + raw["model_name"],
    N=raw["model_name"].map(T5_PARAMS),
    D=raw["steps"] * T5_TOKENS_PER_STEP,
    data="pile",
    step=raw["steps"],
  )


def _olmo(raw: pd.DataFrame, metric: str) -> pd.DataFrame:
  """OLMo's validation losses along training (its W&B logs)."""
  columns = OLMO_PILE if metric == "pile" else (metric,)
  values = raw[columns[0]]
  for column in columns[1:]:
    values = values.fillna(raw[column])
  return _points(
    raw,
    values,
    log=metric.endswith("/Perplexity"),
    model=raw["model_name"].str.strip(),  # OLMo-1B's name has a trailing space.
    N=raw["num_params"].map(count),
    D=raw["Step"] * raw["model_name"].str.strip().map(OLMO_TOKENS_PER_STEP),
    data="dolma",
    step=raw["Step"],
  )


def _datablations(raw: pd.DataFrame, metric: str) -> pd.DataFrame:
  """Muennighoff et al.'s data-constrained runs on C4, one final loss per run; U is tokens over epochs."""
  name = raw["model_args"].str.extract(r"'name': '([^']+)'", expand=False)
  return _points(
    raw,
    raw[metric],
    log=False,
    model="GPT2-" + name,
    N=raw["num_params"].map(count),
    D=raw["token_num"],
    U=name.map(DATABLATIONS_UNIQUE).fillna(raw["token_num"] / raw["epochs"]),
    data=raw["data"],
  )


def _datablations_curves(data: str) -> Callable[[pd.DataFrame, str], pd.DataFrame]:
  """Muennighoff et al.'s largest runs on one dataset along training: 3 sizes, each at 8 repetition levels."""

  def read(raw: pd.DataFrame, metric: str) -> pd.DataFrame:
    raw = raw[raw["data"] == data]
    unique = raw["tokens_per_epoch"]
    return _points(
      raw,
      raw[metric],
      log=False,
      model="GPT2-" + raw["num_params"] + "-" + raw["data"] + "-" + raw["epochs"].astype(str) + "ep",
      N=raw["num_params"].map(count),
      D=raw["token_num"],
      U=np.minimum(raw["token_num"], unique),
      data=raw["data"],
    )

  return read


def _overtrain(data: str) -> Callable[[pd.DataFrame, str], pd.DataFrame]:
  """Gadre et al.'s over-trained runs on one dataset: a final loss per (size, tokens per parameter)."""

  def read(raw: pd.DataFrame, metric: str) -> pd.DataFrame:
    raw = raw[raw["dataset_name"] == data]
    return _points(raw, raw[metric], log=False, model=raw["name"], N=raw["N"], D=raw["D"], data=data)

  return read


def _loss_columns(prefix: str = "loss_") -> Callable[[pd.DataFrame], list[str]]:
  """The metrics of a file: its columns that start with `prefix`, less confidence bounds."""
  return lambda raw: [c for c in raw.columns if c.startswith(prefix) and not re.match(r"loss_(upper|lower)_", c)]


@dataclasses.dataclass(frozen=True)
class Family:
  """A family of runs in ColPret: its file, its reader, its metrics (the first is the default) and what it is."""

  path: str
  read: Callable[[pd.DataFrame, str], pd.DataFrame]
  metrics: Callable[[pd.DataFrame], list[str]]
  about: str


FAMILIES: dict[str, Family] = {
  "opt": Family(
    "aggregated_eval/opt_trajectories.csv",
    _opt,
    lambda raw: ["ppl"],
    "OPT 125M-175B (Xia et al.'s trajectories); loss = log(validation perplexity)",
  ),
  "gpt3": Family(
    "raw_data/gpt3/extracted.csv",
    _gpt3,
    lambda raw: ["val_loss", "train_loss"],
    "GPT-3 125M-175B, curves digitised from the paper's figure",
  ),
  "t5_pile": Family(
    "aggregated_eval/t5_pile.csv",
    _t5_pile,
    lambda raw: ["val_perplexity"],
    "Pile-T5 base-XXL; loss = log(inference-eval perplexity)",
  ),
  "olmo": Family(
    "aggregated_eval/olmo.csv",
    _olmo,
    lambda raw: ["pile"] + [c for c in raw.columns if c.endswith(("/CrossEntropyLoss", "/Perplexity"))],
    "OLMo 1B and 7B along training; metric 'pile' is the Pile validation loss under either name",
  ),
  "datablations": Family(
    "aggregated_eval/datablations_contour_losses.csv",
    _datablations,
    lambda raw: ["openLM_loss"],
    "Muennighoff et al.'s data-constrained runs on C4, 7M-8.7B, final losses, U varies",
  ),
  "datablations_c4": Family(
    "aggregated_eval/datablations_losses.csv",
    _datablations_curves("c4"),
    lambda raw: ["loss"],
    "Muennighoff et al.'s 2.8B-8.7B runs on C4 along training, 8 repetition levels each",
  ),
  "datablations_oscar": Family(
    "aggregated_eval/datablations_losses.csv",
    _datablations_curves("oscar"),
    lambda raw: ["loss"],
    "Muennighoff et al.'s 2.8B-8.7B runs on OSCAR along training, 8 repetition levels each",
  ),
  **{
    f"overtrain_{short}": Family(
      "raw_data/overtrain/overtrain_downstreams.csv",
      _overtrain(name),
      lambda raw: ["loss_c4_val"] + [c for c in _loss_columns()(raw) if c != "loss_c4_val"],
      f"Gadre et al.'s over-trained runs on {title}, 11M-6.9B at 5-640 tokens per parameter, final losses",
    )
    for short, name, title in (
      ("c4", "c4_original", "C4"),
      ("rpj", "rpj", "RedPajama"),
      ("rw", "rw_original", "RefinedWeb"),
    )
  },
}


def family_file(source: Path, family: str) -> Path:
  """The file a family is read from: under a clone of ColPret, or `source` itself if it is that file."""
  path = FAMILIES[family].path
  if source.is_dir():
    return source / path
  if source.name != Path(path).name:
    raise ValueError(f"--source {source} is not the {family} family's file; that is {path} (or pass the clone)")
  return source


def read_family(source: str | Path, family: str, checkpoints: str = "final", metric: str | None = None) -> pd.DataFrame:
  """One family's points: every model's final checkpoint, or every checkpoint; errors name the argument."""
  source = Path(source)
  if family not in FAMILIES:
    raise ValueError(f"--family {family!r} is unknown; allowed: {', '.join(FAMILIES)}")
  if checkpoints not in ("final", "all"):
    raise ValueError(f"--checkpoints {checkpoints!r}; allowed: final, all")
  if not source.exists():
    raise ValueError(f"--source {source}: no such file or directory")
  path = family_file(source, family)
  if not path.is_file():
    raise ValueError(f"--source {source} has no {FAMILIES[family].path} (the {family} family's file)")
  raw = pd.read_csv(path, low_memory=False)
  allowed = FAMILIES[family].metrics(raw)
  metric = metric or allowed[0]
  if metric not in allowed:
    raise ValueError(f"--metric {metric!r} is not one of the {family} family's; allowed: {', '.join(allowed)}")
  try:
    points = FAMILIES[family].read(raw, metric)
  except KeyError as e:
    raise ValueError(f"{path} has no column {e.args[0]!r}: it is not ColPret's {family} file") from None
  points = points[np.isfinite(points["loss"]) & (points["D"] != 0)]  # D = 0: the initial evaluation.
  unknown = ~(np.isfinite(points["N"]) & np.isfinite(points["D"]) & (points["N"] > 0) & (points["D"] > 0))
  if unknown.any():
    raise ValueError(f"{path}: no size or token count for model {points.loc[unknown, 'model'].iloc[0]!r}")
  points = points.assign(family=family, metric=metric, source=FAMILIES[family].path)
  points = points.reindex(columns=COLUMNS).sort_values(["N", "model", "D"], kind="stable", ignore_index=True)
  if checkpoints == "final":
    points = points.groupby("model", sort=False).tail(1).reset_index(drop=True)  # Sorted: the largest D.
  return points


def _count_text(value: float) -> str:
  """A count for people: 125M, 2.8B, 1.4T."""
  if not math.isfinite(value):
    return "-"
  for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
    if value >= scale:
      return f"{value / scale:.3g}{suffix}"
  return f"{value:.3g}"


def list_families(source: str | Path) -> str:
  """A table of the families found under `source`: models, sizes, and the ranges of N and D (finals)."""
  source = Path(source)
  if not source.exists():
    raise ValueError(f"--source {source}: no such file or directory")
  names = [f for f in FAMILIES if source.is_dir() or source.name == Path(FAMILIES[f].path).name]
  if not names:
    files = sorted({Path(f.path).name for f in FAMILIES.values()})
    raise ValueError(f"--source {source} is no family's file; allowed files: {', '.join(files)} (or the clone)")
  header = f"{'family':<19} {'models':>6} {'sizes':>5}  {'N':<13} {'D (final)':<13} {'checkpoints':>11} {'U':<5} about"
  lines = [header]
  for name in names:
    path = family_file(source, name)
    if not path.is_file():
      lines.append(f"{name:<19} absent: no {FAMILIES[name].path}")
      continue
    every = read_family(source, name, "all")
    final = every.groupby("model", sort=False).tail(1)
    n_range = f"{_count_text(final['N'].min())}-{_count_text(final['N'].max())}"
    d_range = f"{_count_text(final['D'].min())}-{_count_text(final['D'].max())}"
    unique = "yes" if final["U"].notna().all() else "no"
    lines.append(
      f"{name:<19} {final['model'].nunique():>6} {final['N'].nunique():>5}  {n_range:<13} {d_range:<13} "
      f"{len(every):>11} {unique:<5} {FAMILIES[name].about}"
    )
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--source", required=True, help="A clone of github.com/IBM/ColPret, or one family's file.")
  parser.add_argument("--list", action="store_true", help="Print the families found, with sizes and token ranges.")
  parser.add_argument("--family", help=f"The family to write: {', '.join(FAMILIES)}.")
  parser.add_argument("--out", help="The CSV to write ('-': standard output).")
  parser.add_argument(
    "--checkpoints",
    choices=["final", "all"],
    default="final",
    help="Each model's final checkpoint (largest D; default), or every checkpoint.",
  )
  parser.add_argument("--metric", help="The family's loss column (default: its first; an error lists them).")
  args = parser.parse_args(argv)
  if args.list:
    if args.family or args.out:
      parser.error("--list prints every family; leave out --family and --out")
  elif not (args.family and args.out):
    parser.error("--family and --out are needed (or --list)")
  try:
    if args.list:
      print(list_families(args.source))
      return
    points = read_family(args.source, args.family, args.checkpoints, args.metric)
  except (ValueError, OSError) as e:  # pandas' parser errors are ValueErrors.
    sys.exit(f"error: {e}")
  if args.out == "-":
    points.to_csv(sys.stdout, index=False)
    return
  Path(args.out).parent.mkdir(parents=True, exist_ok=True)
  points.to_csv(args.out, index=False)
  print(
    f"{args.out}: {len(points)} points of {points['model'].nunique()} models ({args.family}, {args.checkpoints}; "
    f"N {_count_text(points['N'].min())}-{_count_text(points['N'].max())}, "
    f"D {_count_text(points['D'].min())}-{_count_text(points['D'].max())})"
  )


if __name__ == "__main__":
  main(sys.argv[1:])
