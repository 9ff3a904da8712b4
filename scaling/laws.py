"""Scaling laws as data, and their fit by the standard procedure (Hoffmann et al. 2022).

Each law is written in log space as a log-sum-exp of its terms, with parameters as logs where
they must be positive (A = e^a, E = e^e). The fit minimises the sum over points of
Huber_delta(log L_pred - log L_obs) by L-BFGS from every start of a grid at once: the starts are
one vectorised JAX program (vmap over a while loop), and the best optimum is kept.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import warnings
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

# log L as a function of (theta, log x, log d); x is absent (zeros) for single-factor laws.
LogPredict = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True, eq=False)  # Hashed by identity: compiled fits are cached per law.
class Law:
  """A law: its fitted parameters (log-space names), inputs, log-space form and starting grid."""

  name: str
  formula: str
  params: tuple[str, ...]
  inputs: tuple[str, ...]  # ("x", "d") for joint laws, ("d",) for single-factor ones.
  log_predict: LogPredict
  grid: Mapping[str, Sequence[float]]
  exp_params: tuple[str, ...]  # Stored as logs; reported as exp (a -> A).

  def natural(self, theta: np.ndarray) -> dict[str, float]:
    """Reported parameters: e.g. {'A': e^a, 'alpha': ..., 'E': e^e}."""
    return {(p.upper() if p in self.exp_params else p): float(np.exp(v) if p in self.exp_params else v)
            for p, v in zip(self.params, theta)}

  def starts(self) -> np.ndarray:
    """Every point of the starting grid: (num_starts, num_params)."""
    return np.asarray(list(itertools.product(*(self.grid[p] for p in self.params))), np.float64)

  def predict(self, theta: np.ndarray, x: np.ndarray | None, d: np.ndarray) -> np.ndarray:
    """The law's loss at (x, d)."""
    log_x = np.log(x) if x is not None else np.zeros_like(np.log(d))
    with jax.enable_x64(True):
      return np.exp(np.asarray(self.log_predict(jnp.asarray(theta), jnp.asarray(log_x), jnp.log(d))))


def _lse(*terms):
  """log(sum(exp(terms))), elementwise; written out because stacking for jax.nn.logsumexp is 3x slower."""
  top = functools.reduce(jnp.maximum, terms)
  top = jax.lax.stop_gradient(jnp.where(jnp.isfinite(top), top, 0.0))
  return top + jnp.log(sum(jnp.exp(t - top) for t in terms))


_SCALE = np.arange(0.0, 2.01, 0.5)  # Hoffmann's grid for exponents.
_OFFSET = np.arange(-1.0, 1.01, 0.5)  # ... for log E.
_LOGA = np.arange(0.0, 25.1, 5.0)  # ... for log A and log B.

LAWS: dict[str, Law] = {
    "multiplicative": Law(
        "multiplicative", "L = A * X^-alpha * D^-beta + E", ("a", "alpha", "beta", "e"), ("x", "d"),
        lambda t, lx, ld: _lse(t[0] - t[1] * lx - t[2] * ld, t[3]),
        {"a": _LOGA, "alpha": _SCALE, "beta": _SCALE, "e": _OFFSET}, ("a", "e")),
    "additive": Law(
        "additive", "L = E + A / X^alpha + B / D^beta", ("a", "alpha", "b", "beta", "e"), ("x", "d"),
        lambda t, lx, ld: _lse(t[0] - t[1] * lx, t[2] - t[3] * ld, t[4]),
        {"a": _LOGA, "alpha": _SCALE, "b": _LOGA, "beta": _SCALE, "e": _OFFSET}, ("a", "b", "e")),
    "single": Law(
        "single", "L = A * D^-beta + E", ("a", "beta", "e"), ("d",),
        lambda t, lx, ld: _lse(t[0] - t[1] * ld, t[2]),
        {"a": _LOGA, "beta": _SCALE, "e": _OFFSET}, ("a", "e")),
    "rectified": Law(
        "rectified", "L = B / (D_l + D^beta) + E", ("b", "d_l", "beta", "e"), ("d",),
        lambda t, lx, ld: _lse(t[0] - jnp.logaddexp(t[1], t[2] * ld), t[3]),
        {"b": _LOGA, "d_l": np.arange(0.0, 10.1, 2.5), "beta": _SCALE, "e": _OFFSET}, ("b", "d_l", "e")),
}


def get_law(name: str) -> Law:
  if name not in LAWS:
    raise ValueError(f"unknown law {name!r}; allowed: {sorted(LAWS)}")
  return LAWS[name]


@dataclasses.dataclass(frozen=True)
class Fit:
  """The best optimum over all starts."""

  law: str
  params: dict[str, float]  # Natural parameters (A, alpha, beta, E, ...).
  theta: np.ndarray  # Log-space parameters.
  objective: float
  converged: bool
  num_points: int
  num_starts: int
  on_grid_edge: tuple[str, ...]  # Parameters whose optimum lies outside the starting grid.
  candidates: np.ndarray  # The best few distinct optima (log space), best first: bootstrap starts.

  def to_json(self) -> dict:
    return {"law": self.law, "formula": LAWS[self.law].formula, "params": self.params,
            "objective": self.objective, "converged": self.converged, "num_points": self.num_points,
            "num_starts": self.num_starts, "on_grid_edge": list(self.on_grid_edge)}


def objective(law: Law, theta: jax.Array, log_x: jax.Array, log_d: jax.Array, log_y: jax.Array,
              weights: jax.Array, delta: float) -> jax.Array:
  """Weighted sum over points of Huber_delta(log prediction - log observation).

  Weights are how often a point counts: 1 for a plain fit, resampling counts for a bootstrap
  replicate, 0 for a point held out.
  """
  residual = law.log_predict(theta, log_x, log_d) - log_y
  return (weights * optax.losses.huber_loss(residual, delta=delta)).sum()


def _minimize(fun: Callable[[jax.Array], jax.Array], x0: jax.Array, max_iter: int, tol: float):
  """L-BFGS with a zoom line search until the gradient norm is below `tol`."""
  opt = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(fun)

  def step(carry):
    x, state, i = carry
    value, grad = value_and_grad(x, state=state)
    updates, state = opt.update(grad, state, x, value=value, grad=grad, value_fn=fun)
    return optax.apply_updates(x, updates), state, i + 1

  def keep_going(carry):
    _, state, i = carry
    grad_norm = optax.tree.norm(optax.tree.get(state, "grad"))
    return (i == 0) | ((i < max_iter) & (grad_norm >= tol))

  x, state, i = jax.lax.while_loop(keep_going, step, (x0, opt.init(x0), 0))
  return x, fun(x), optax.tree.norm(optax.tree.get(state, "grad"))


def fit_many(law: Law, starts: np.ndarray, log_x: np.ndarray, log_d: np.ndarray, log_y: np.ndarray,
             weights: np.ndarray | None = None, delta: float = 1e-3, max_iter: int = 100,
             tol: float = 1e-10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Optimises every start on every dataset at once, in one JAX program.

  starts: (S, P). log_x, log_d, log_y, weights: (R, n) for R datasets of n points (or (n,) for
  one). Returns theta (R, S, P), objective (R, S) and final gradient norm (R, S).
  """
  data = [np.atleast_2d(a) for a in (log_x, log_d, log_y)]
  weights = np.ones_like(data[2]) if weights is None else np.atleast_2d(weights)
  shape = np.broadcast_shapes(*(a.shape for a in data), weights.shape)
  data = [np.broadcast_to(a, shape) for a in (*data, weights)]
  with jax.enable_x64(True):
    run = _compiled_fit(law, float(delta), int(max_iter), float(tol))
    theta, value, grad_norm = run(jnp.asarray(starts, jnp.float64), *(jnp.asarray(a, jnp.float64) for a in data))
    value = jnp.where(jnp.isfinite(value), value, jnp.inf)
    return np.asarray(theta), np.asarray(value), np.asarray(grad_norm)


@functools.lru_cache(maxsize=None)
def _compiled_fit(law: Law, delta: float, max_iter: int, tol: float):
  """The jitted (datasets x starts) fit of one law: built once, so refits only run it."""

  def one(x0, lx, ld, ly, w):
    return _minimize(lambda t: objective(law, t, lx, ld, ly, w, delta), x0, max_iter, tol)

  per_start = jax.vmap(one, in_axes=(0, None, None, None, None))
  return jax.jit(jax.vmap(per_start, in_axes=(None, 0, 0, 0, 0)))


def check_points(law: Law, d, y, x=None, names: Mapping[str, str] | None = None):
  """Validated float arrays (x, d, y); errors name the column and the row."""
  names = {"x": "x", "d": "d", "y": "y", **(names or {})}
  if ("x" in law.inputs) != (x is not None):
    raise ValueError(f"law {law.name!r} takes inputs {law.inputs}")
  out = []
  for key, arr in (("x", x), ("d", d), ("y", y)):
    if arr is None:
      out.append(None)
      continue
    arr = np.asarray(arr, np.float64)
    bad = np.flatnonzero(~(np.isfinite(arr) & (arr > 0)))
    if len(bad):
      raise ValueError(f"column {names[key]!r} must be positive and finite; row {int(bad[0])} is {arr[bad[0]]}")
    out.append(arr)
  if len(out[2]) < len(law.params):
    raise ValueError(f"{len(out[2])} points cannot determine the {len(law.params)} parameters of law {law.name!r}")
  return out


def _logs(x, d):
  return (np.log(x) if x is not None else np.zeros_like(d)), np.log(d)


def fit(law: Law | str, d: Sequence[float], y: Sequence[float], x: Sequence[float] | None = None,
        delta: float = 1e-3, starts: np.ndarray | None = None, grad_tol: float = 1e-6,
        weights: np.ndarray | None = None) -> Fit:
  """Fits a law to points (x, d, y) from every start of its grid; keeps the best."""
  law = get_law(law) if isinstance(law, str) else law
  x, d, y = check_points(law, d, y, x)
  starts = law.starts() if starts is None else np.asarray(starts, np.float64)
  log_x, log_d = _logs(x, d)
  theta, value, grad_norm = (a[0] for a in fit_many(law, starts, log_x, log_d, np.log(y), weights, delta))
  order = np.argsort(value)
  best = int(order[0])
  edge = tuple(p for i, p in enumerate(law.params)
               if not min(law.grid[p]) <= theta[best, i] <= max(law.grid[p]))
  if edge:
    warnings.warn(f"{law.name} fit: optimum of {list(edge)} lies outside the starting grid", stacklevel=2)
  _, first = np.unique(np.round(theta[order], 3), axis=0, return_index=True)
  candidates = theta[order][np.sort(first)][:4]
  return Fit(law.name, law.natural(theta[best]), theta[best], float(value[best]),
             bool(grad_norm[best] < grad_tol), len(y), len(starts), edge, candidates)


def refit_weighted(law: Law, fit_: Fit, d, y, x, weights: np.ndarray, delta: float) -> np.ndarray:
  """Best log-space parameters for each row of `weights` (R, n), started from the fit's optima."""
  log_x, log_d = _logs(x, d)
  theta, value, _ = fit_many(law, fit_.candidates, log_x, log_d, np.log(y), weights, delta)
  return theta[np.arange(len(theta)), np.argmin(value, axis=1)]


@dataclasses.dataclass(frozen=True)
class Bootstrap:
  """Bootstrap replicates of a fit: parameter draws and percentile intervals."""

  thetas: np.ndarray  # (replicates, P) log-space parameters.
  level: float

  def interval(self, law: Law) -> dict[str, tuple[float, float]]:
    """Percentile interval of each natural parameter."""
    lo, hi = 50 * (1 - self.level), 50 * (1 + self.level)
    draws = [law.natural(t) for t in self.thetas]
    return {k: (float(np.percentile([dr[k] for dr in draws], lo)), float(np.percentile([dr[k] for dr in draws], hi)))
            for k in draws[0]}

  def prediction_interval(self, law: Law, x, d) -> tuple[np.ndarray, np.ndarray]:
    """Percentile band of the law's prediction at (x, d)."""
    preds = np.stack([law.predict(t, x, d) for t in self.thetas])
    return np.percentile(preds, 50 * (1 - self.level), axis=0), np.percentile(preds, 50 * (1 + self.level), axis=0)


def bootstrap(law: Law | str, fit_: Fit, d, y, x=None, replicates: int = 1000, delta: float = 1e-3,
              level: float = 0.9, seed: int = 0) -> Bootstrap:
  """Resamples the points with replacement `replicates` times and refits each, all at once."""
  law = get_law(law) if isinstance(law, str) else law
  x, d, y = check_points(law, d, y, x)
  n = len(y)
  counts = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=replicates).astype(np.float64)
  return Bootstrap(refit_weighted(law, fit_, d, y, x, counts, delta), level)


def mean_abs_deviation(law: Law, theta: np.ndarray, d, y, x=None) -> float:
  """Mean |predicted - observed| loss (Zhang et al.'s Delta)."""
  return float(np.mean(np.abs(law.predict(theta, x, np.asarray(d)) - np.asarray(y))))


@dataclasses.dataclass(frozen=True)
class Validation:
  """How well a law describes and extrapolates a set of points."""

  fitted_error: float  # Delta_e: mean |pred - obs| on the points fitted (all but the held-out ones).
  heldout_error: float | None  # Delta_h: the same on the held-out points.
  heldout_relative_errors: list[float]  # |pred - obs| / obs of each held-out point.
  loo_error: float  # Mean |pred - obs| of each point predicted by a fit without it.
  holdout: str

  def to_json(self) -> dict:
    return dataclasses.asdict(self)


def heldout_mask(x, d, holdout: str) -> np.ndarray:
  """Points held out for extrapolation: those at the largest x, or at the largest d."""
  if holdout == "largest_x":
    if x is None:
      raise ValueError("holdout 'largest_x' needs an x column")
    return np.asarray(x) == np.max(x)
  if holdout == "largest_d":
    return np.asarray(d) == np.max(d)
  raise ValueError(f"unknown holdout {holdout!r}; allowed: 'largest_x', 'largest_d'")


def validate(law: Law | str, d, y, x=None, holdout: str = "largest_d", delta: float = 1e-3,
             full: Fit | None = None) -> Validation:
  """Fits without the held-out points and predicts them; and leave-one-out over all points.

  `full`, the fit to all points if the caller has it, seeds the leave-one-out refits.
  """
  law = get_law(law) if isinstance(law, str) else law
  x, d, y = check_points(law, d, y, x)
  mask = heldout_mask(x, d, holdout)
  kept = ~mask
  if kept.sum() < len(law.params):
    raise ValueError(f"holding out {holdout} leaves {int(kept.sum())} points for {len(law.params)} parameters")
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    part = fit(law, d, y, x=x, delta=delta, weights=kept.astype(np.float64))
    full = full or fit(law, d, y, x=x, delta=delta)
  pred = law.predict(part.theta, x, d)
  n = len(y)
  loo = refit_weighted(law, full, d, y, x, 1.0 - np.eye(n), delta)
  loo_pred = np.asarray([law.predict(loo[i], None if x is None else x[i:i + 1], d[i:i + 1])[0] for i in range(n)])
  return Validation(
      fitted_error=float(np.mean(np.abs(pred[kept] - y[kept]))),
      heldout_error=float(np.mean(np.abs(pred[mask] - y[mask]))) if mask.any() else None,
      heldout_relative_errors=[float(v) for v in np.abs(pred[mask] - y[mask]) / y[mask]],
      loo_error=float(np.mean(np.abs(loo_pred - y))), holdout=holdout)
