"""Laws fitted to a DataFrame's columns (`fit_frame`), and what every analysis of a study's results
shares in choosing its points: the bases' names, the rows of a joint law over a base factor, and how
a fit is validated (which largest value is held out)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from scaling import laws


def base_names(frame: pd.DataFrame) -> list[str]:
  """The base of each row: its size, or "size at D_p T" where the frame has that size at several D_p
  (a size pretrained, or checkpointed, at several D_p is several bases)."""
  several = frame.groupby("size")["pretrain_tokens"].transform("nunique") > 1
  return [f"{s} at D_p {t:.3g}" if many else s for s, t, many in zip(frame["size"], frame["pretrain_tokens"], several)]


# Factors of the base: a law over one is fitted with the other held fixed.
BASE_AXES = ("non_embedding_params", "pretrain_tokens")


def law_rows(group: pd.DataFrame, axis: str) -> pd.DataFrame:
  """The rows of a (task, method)'s points that a joint law over `axis` is fitted to. Base factors
  vary one at a time: over N, the bases of one D_p; over D_p, the bases of one N (each time the
  value that leaves the most distinct points; on ties the largest, and a known one before unknown)."""
  if axis not in BASE_AXES:
    return group
  other = next(a for a in BASE_AXES if a != axis)
  slices = [part for _, part in group.groupby(other, dropna=False)]
  return max(slices, key=lambda part: (part[axis].nunique(), part[other].notna().all(), part[other].max()))


def choose_holdout(points: pd.DataFrame, law: str, d: str, x: str | None = None) -> str | None:
  """How a law over columns (x, d) is validated: the largest x held out, else the largest d (where
  holding out x leaves too little to fit, such as one value of x); None where neither leaves the law
  determined (`laws.holdout_problem`)."""
  law_ = laws.get_law(law)
  xs = None if x is None else points[x].to_numpy(float)
  for holdout in ("largest_x", "largest_d") if x else ("largest_d",):
    if laws.holdout_problem(law_, xs, points[d].to_numpy(float), holdout) is None:
      return holdout
  return None


def fit_frame(
  df: pd.DataFrame,
  law: str,
  d: str,
  y: str,
  x: str | None = None,
  delta: float = 1e-3,
  bootstrap: int = 0,
  holdout: str | None = "largest_d",
  level: float = 0.9,
) -> dict:
  """Fits `law` to a DataFrame's columns; errors name the column and the row.

  Returns the fit's JSON record: parameters, objective, convergence, points, and (if asked)
  bootstrap intervals at `level` and held-out validation errors.
  """
  law_ = laws.get_law(law)
  wanted = {"d": d, "y": y, **({"x": x} if x else {})}
  missing = [c for c in wanted.values() if c not in df.columns]
  if missing:
    raise ValueError(f"column {missing[0]!r} is not in the data; columns: {list(df.columns)}")
  values = {}
  for role, col in wanted.items():
    arr = pd.to_numeric(df[col], errors="coerce").to_numpy(np.float64)
    bad = np.flatnonzero(~(np.isfinite(arr) & (arr > 0)))
    if len(bad):
      value = df[col].iloc[bad[0]]
      value = value.item() if hasattr(value, "item") else value  # Plain Python in the message.
      raise ValueError(
        f"column {col!r} must be positive and finite; {df.index.name or 'row'} {df.index[bad[0]]} is {value!r}"
      )
    values[role] = arr
  points = (values["d"], values["y"], values.get("x"))
  fit = laws.fit(law_, *points[:2], x=points[2], delta=delta)
  record = {**fit.to_json(), "huber_delta": delta, "columns": wanted}
  if bootstrap:
    boot = laws.bootstrap(law_, fit, *points[:2], x=points[2], replicates=bootstrap, delta=delta, level=level)
    record["intervals"] = {"level": level, "replicates": bootstrap, **boot.interval(law_)}
    record["bootstrap_theta"] = boot.thetas.tolist()  # Log-space draws: bands can be redrawn from fits.json.
  if holdout:
    record["validation"] = laws.validate(
      law_, *points[:2], x=points[2], holdout=holdout, delta=delta, full=fit
    ).to_json()
  return record
