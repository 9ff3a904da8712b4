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
  return jax.nn.logsumexp(jnp.stack(jnp.broadcast_arrays(*terms)), axis=0)


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

  def to_json(self) -> dict:
    return {"law": self.law, "formula": LAWS[self.law].formula, "params": self.params,
            "objective": self.objective, "converged": self.converged, "num_points": self.num_points,
            "num_starts": self.num_starts, "on_grid_edge": list(self.on_grid_edge)}


def objective(law: Law, theta: jax.Array, log_x: jax.Array, log_d: jax.Array, log_y: jax.Array,
              delta: float) -> jax.Array:
  """Sum over points of Huber_delta(log prediction - log observation)."""
  return optax.losses.huber_loss(law.log_predict(theta, log_x, log_d), log_y, delta=delta).sum()


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
  return x, fun(x), optax.tree.norm(optax.tree.get(state, "grad")), i


def fit_many(law: Law, starts: np.ndarray, log_x: np.ndarray, log_d: np.ndarray, log_y: np.ndarray,
             delta: float = 1e-3, max_iter: int = 100, tol: float = 1e-10):
  """Optimises every start on every dataset at once: arrays of shape (datasets, starts, ...).

  log_x, log_d, log_y: (datasets, points). Returns (theta, objective, grad_norm), each with
  leading axes (datasets, starts).
  """

  with jax.enable_x64(True):
    run = _compiled_fit(law, float(delta), int(max_iter), float(tol))
    theta, value, grad_norm = run(jnp.asarray(starts), jnp.asarray(log_x), jnp.asarray(log_d), jnp.asarray(log_y))
    return np.asarray(theta), np.asarray(value), np.asarray(grad_norm)


@functools.lru_cache(maxsize=None)
def _compiled_fit(law: Law, delta: float, max_iter: int, tol: float):
  """The jitted (datasets x starts) fit of one law: built once, so refits only run it."""

  def one(x0, lx, ld, ly):
    return _minimize(lambda t: objective(law, t, lx, ld, ly, delta), x0, max_iter, tol)[:3]

  return jax.jit(jax.vmap(jax.vmap(one, in_axes=(0, None, None, None)), in_axes=(None, 0, 0, 0)))


def fit(law: Law | str, d: Sequence[float], y: Sequence[float], x: Sequence[float] | None = None,
        delta: float = 1e-3, starts: np.ndarray | None = None, grad_tol: float = 1e-6) -> Fit:
  """Fits a law to points (x, d, y) from every start of its grid; keeps the best."""
  law = get_law(law) if isinstance(law, str) else law
  d, y = np.asarray(d, np.float64), np.asarray(y, np.float64)
  x = None if x is None else np.asarray(x, np.float64)
  if ("x" in law.inputs) != (x is not None):
    raise ValueError(f"law {law.name!r} takes inputs {law.inputs}")
  for name, arr in (("x", x), ("d", d), ("y", y)):
    if arr is not None and not (np.all(np.isfinite(arr)) and np.all(arr > 0)):
      bad = int(np.flatnonzero(~(np.isfinite(arr) & (arr > 0)))[0])
      raise ValueError(f"{name} must be positive and finite; row {bad} is {arr[bad]}")
  if len(y) < len(law.params):
    raise ValueError(f"{len(y)} points cannot determine the {len(law.params)} parameters of law {law.name!r}")
  starts = law.starts() if starts is None else np.asarray(starts, np.float64)
  log_x = np.log(x) if x is not None else np.zeros_like(d)
  theta, value, grad_norm = fit_many(law, starts, log_x[None], np.log(d)[None], np.log(y)[None], delta)
  theta, value, grad_norm = theta[0], value[0], grad_norm[0]
  value = np.where(np.isfinite(value), value, np.inf)
  best = int(np.argmin(value))
  edge = tuple(p for i, p in enumerate(law.params)
               if not min(law.grid[p]) <= theta[best, i] <= max(law.grid[p]))
  if edge:
    warnings.warn(f"{law.name} fit: optimum of {list(edge)} lies outside the starting grid", stacklevel=2)
  return Fit(law.name, law.natural(theta[best]), theta[best], float(value[best]),
             bool(grad_norm[best] < grad_tol), len(y), len(starts), edge)
