"""Laws fitted to a DataFrame's columns (`fit_frame`; every law that fits them, ranked: `fit_laws`), their
predictions and validated range, and what every analysis of a study's results shares in choosing its points:
the bases' names, the rows of a joint law over a base factor, and how a fit is validated (which largest value
is held out)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

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


def holdouts(points: pd.DataFrame, law: str, d: str, x: str | None = None) -> list[str]:
  """The holdouts that leave a law over columns (x, d) determined (`laws.holdout_problem`): the largest x, the
  largest d, in that order."""
  law_ = laws.get_law(law)
  xs = None if x is None else points[x].to_numpy(float)
  return [
    h
    for h in (("largest_x", "largest_d") if x else ("largest_d",))
    if laws.holdout_problem(law_, xs, points[d].to_numpy(float), h) is None
  ]


def choose_holdout(points: pd.DataFrame, law: str, d: str, x: str | None = None) -> str | None:
  """How a law over columns (x, d) is validated: the largest x held out, else the largest d (where
  holding out x leaves too little to fit, such as one value of x); None where neither leaves the law
  determined."""
  return next(iter(holdouts(points, law, d, x)), None)


def fit_frame(
  df: pd.DataFrame,
  law: str,
  d: str,
  y: str,
  x: str | None = None,
  delta: float = 1e-3,
  bootstrap: int = 0,
  holdout: str | Sequence[str] | None = "largest_d",
  level: float = 0.9,
  u: str | None = None,
) -> dict:
  """Fits `law` to a DataFrame's columns (x, d, u: the law's inputs; y: the loss); errors name the column and row.

  Returns the fit's JSON record: parameters, objective, convergence, points, which parameters the points do not
  determine (`laws.undetermined`), the slopes of the residuals, and (if asked) bootstrap intervals at `level` and
  held-out validation errors. With several holdouts, each is validated (`validations`); the first is `validation`.
  """
  law_ = laws.get_law(law)
  wanted = {"d": d, "y": y, **({"x": x} if x else {}), **({"u": u} if u else {})}
  values = _columns(df, wanted)
  points = {"d": values["d"], "y": values["y"], "x": values.get("x"), "u": values.get("u")}
  fit = laws.fit(law_, **points, delta=delta)
  record = {**fit.to_json(), "huber_delta": delta, "columns": wanted}
  boot = None
  if bootstrap:
    boot = laws.bootstrap(law_, fit, **points, replicates=bootstrap, delta=delta, level=level)
    record["intervals"] = {"level": level, "replicates": bootstrap, **boot.interval(law_)}
    record["bootstrap_theta"] = boot.thetas.tolist()  # Log-space draws: bands can be redrawn from fits.json.
  holdouts_ = [holdout] if isinstance(holdout, str) else list(holdout or ())
  checked = [laws.validate(law_, **points, holdout=h, delta=delta, full=fit) for h in holdouts_]
  if checked:
    record["validation"] = checked[0].to_json()
  if len(checked) > 1:
    record["validations"] = [v.to_json() for v in checked]
  record["undetermined"] = laws.undetermined(law_, fit, **points, boot=boot, validation=checked[0] if checked else None)
  record["determined"] = not record["undetermined"]
  record["residual_slopes"] = residual_slopes(law_, fit.theta, **points)
  return record


def _columns(df: pd.DataFrame, wanted: dict[str, str]) -> dict[str, np.ndarray]:
  """The column of each role as positive finite floats; errors name the column and the row."""
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
  return values


def residual_slopes(law: laws.Law, theta: np.ndarray, d, y, x=None, u=None) -> dict[str, float]:
  """The least-squares slope of log(observed / predicted) per decade of x and of d (each that varies), as in
  OLMo's ladder analysis: a trend in the residuals means the law's form misses something."""
  residual = np.log(y) - np.log(law.predict(theta, x, d, u))
  scales = {"x": x, "d": d} if "x" in law.inputs else {"d": d}
  return {k: float(np.polyfit(np.log10(v), residual, 1)[0]) for k, v in scales.items() if np.ptp(v) > 0}


def d_gains(points: pd.DataFrame, x: str, d: str, y: str, log: bool = False) -> pd.Series | None:
  """Each value of x's mean loss at the smallest d minus at the largest (with `log`, the log of their ratio), over
  the d that every x has (None where fewer than two of either): the multiplicative law makes the gain
  A x^-alpha (d_0^-beta - d_1^-beta), shrinking as x grows, and its log the same for every x where E is 0 (shrinking
  where E > 0); the additive law keeps the gain the same, so its log grows with x."""
  means = points.groupby([x, d])[y].mean().unstack(d).dropna(axis=1)
  if len(means) < 2 or means.shape[1] < 2:
    return None
  first, last = means.iloc[:, 0], means.iloc[:, -1]
  return (np.log(first / last) if log else first - last).rename(
    f"{y} gained from {d} {means.columns[0]:g} to {means.columns[-1]:g}"
  )


def gains_trend(gains: pd.Series) -> str:
  """How D gains change as x grows: "shrink" (the multiplicative law's sign), "grow" (neither joint law's), or
  "neither"."""
  steps = np.diff(gains.to_numpy(float))
  tol = 1e-9 * np.abs(gains.to_numpy(float)).max()  # Rounding: the additive law's equal gains are neither.
  return "shrink" if (steps < -tol).all() else "grow" if (steps > tol).all() else "neither"


def validations(record: dict) -> list[dict]:
  """A fit record's validations: `validations` where it has several, its one `validation`, or none."""
  return record.get("validations") or ([record["validation"]] if "validation" in record else [])


def heldout_score(record: dict, holdouts: set[str] | None = None) -> tuple[float, float] | None:
  """Mean and worst held-out relative error over a fit record's validations (those on `holdouts`, if given);
  None without one."""
  errors = [
    e for v in validations(record) if holdouts is None or v["holdout"] in holdouts for e in v["heldout_relative_errors"]
  ]
  return (float(np.mean(errors)), float(np.max(errors))) if errors else None


def rank(records: list[dict]) -> list[dict]:
  """Fit records by held-out relative error, those without a validation last. The errors are those on the
  holdouts that every validated record has (each record's all, where they share none); each record gets
  `ranking` ({holdouts, mean, worst}, or None) and `chosen`: whether it is the best determined one."""
  held = [{v["holdout"] for v in validations(r)} for r in records if validations(r)]
  shared = set.intersection(*held) if held else set()
  scored = []
  for r in records:
    score = heldout_score(r, shared or None)
    used = [v["holdout"] for v in validations(r) if not shared or v["holdout"] in shared]
    scored.append({**r, "ranking": score and {"holdouts": used, "mean": score[0], "worst": score[1]}})
  scored.sort(key=lambda r: (r["ranking"] is None, r["ranking"]["mean"] if r["ranking"] else 0.0))
  best = next((i for i, r in enumerate(scored) if r["determined"] and r["ranking"]), None)
  return [{**r, "chosen": i == best} for i, r in enumerate(scored)]


def fit_laws(
  df: pd.DataFrame,
  d: str,
  y: str,
  x: str | None = None,
  u: str | None = None,
  delta: float = 1e-3,
  bootstrap: int = 0,
  level: float = 0.9,
) -> list[dict]:
  """Every law whose inputs the columns provide (the joint laws where x is given, else the laws over d alone) and
  whose parameters the points outnumber or match, each validated on the largest x and on the largest d (those
  that leave it determined, `holdouts`), ranked by held-out relative error (`rank`). A law that no holdout leaves
  determined is fitted, not ranked."""
  given = {"x": x, "d": d, "u": u}
  frame = pd.DataFrame(_columns(df, {c: c for c in (x, d, u, y) if c}))
  names = [
    n
    for n, law in laws.LAWS.items()
    if ("x" in law.inputs) == bool(x) and all(given[k] for k in law.inputs) and len(law.params) <= len(frame)
  ]
  return rank(
    [
      fit_frame(
        df, n, d, y, x, delta, bootstrap, holdouts(frame, n, d, x), level, u if "u" in laws.LAWS[n].inputs else None
      )
      for n in names
    ]
  )


def predict(record: dict, point: Mapping[str, float]) -> dict:
  """A fit record's loss at a point ({"x": ..., "d": ..., "u": ...}: the law's inputs): `prediction`, `band` (the
  bootstrap percentile band, where the record has bootstrap draws), `validated_max` (the largest value of x and d
  held out by any of its validations) and `beyond`: the point's value over that largest one, for each input past
  it."""
  law = laws.get_law(record["law"])
  if set(point) != set(law.inputs):
    raise ValueError(f"a point of the {law.name} law gives {', '.join(law.inputs)}; got {', '.join(point) or 'none'}")
  checked = validations(record)
  if not checked:
    raise ValueError("the fit has no validation, so no validated range to predict within; fit it with a holdout")
  theta = np.asarray([record["theta"][p] for p in law.params])
  at = {k: np.asarray([float(v)]) for k, v in point.items()}
  out = {"point": dict(point), "prediction": float(law.predict(theta, **{"x": None, **at})[0])}
  if "bootstrap_theta" in record:
    boot = laws.Bootstrap(np.asarray(record["bootstrap_theta"]), record["intervals"]["level"])
    out["band"] = [float(v[0]) for v in boot.prediction_interval(law, **{"x": None, **at})]
  out["validated_max"] = {k: max(v["validated_max"][k] for v in checked) for k in checked[0]["validated_max"]}
  out["beyond"] = {k: point[k] / top for k, top in out["validated_max"].items() if point[k] > top}
  return out


def validated_range(record: dict) -> str:
  """How far a fit was validated, e.g. "fitted to 3 N up to 4.8e+04 and 5 D_f up to 640, validated at 2.10x N";
  one such clause per validation."""
  cols = record["columns"]
  clauses = []
  for v in validations(record):
    fitted = " and ".join(f"{v['fitted_values'][k]} {cols[k]} up to {v['fitted_max'][k]:.3g}" for k in v["fitted_max"])
    grown = " and ".join(f"{r:.2f}x {cols[k]}" for k, r in v["validated_ratio"].items() if r > 1)
    clauses.append(f"fitted to {fitted}, validated at {grown}")
  return "; ".join(clauses) or "not validated"
