"""Scaling laws as data, and their fit by the standard procedure (Hoffmann et al. 2022).

Each law is written in log space as a log-sum-exp of its terms, with parameters as logs where
they must be positive (A = e^a, E = e^e), over the logs of its inputs: x (a model-side factor such
as parameters N), d (data) and, for the data-constrained law, u (unique data). The fit minimises
the sum over points of Huber_delta(log L_pred - log L_obs) by L-BFGS from every start of a grid at
once: the starts are vectorised JAX programs (a batched L-BFGS), and the best optimum is kept.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import statistics
import warnings
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

# log L as a function of (theta, z): z stacks the logs of the law's inputs, (len(inputs), n) in their order.
LogPredict = Callable[[jax.Array, jax.Array], jax.Array]
INPUTS = {"x": "the model-side factor", "d": "the data", "u": "the unique data"}  # Inputs come in this order.


@dataclasses.dataclass(frozen=True, eq=False)  # Hashed by identity: compiled fits are cached per law.
class Law:
  """A law: its fitted parameters (log-space names), inputs, log-space form and starting grid."""

  name: str
  formula: str
  params: tuple[str, ...]
  inputs: tuple[str, ...]  # ("x", "d") for joint laws, ("d",) for single-factor ones; in INPUTS' order.
  log_predict: LogPredict
  grid: Mapping[str, Sequence[float]]
  exp_params: tuple[str, ...]  # Stored as logs; reported as exp (a -> A).
  min_values: int  # Distinct values x and d each need for the parameters to be determined.

  def natural(self, theta: np.ndarray) -> dict[str, float]:
    """Reported parameters: e.g. {'A': e^a, 'alpha': ..., 'E': e^e}; e^a past float64's range is inf."""
    # A bootstrap or held-out refit may run a log-space parameter off to a value that has no finite
    # exp (a > 709); inf is the honest report of it, and not worth a warning in every study's output.
    with np.errstate(over="ignore"):
      return {n: float(np.exp(v) if p in self.exp_params else v) for n, p, v in zip(self.names, self.params, theta)}

  @property
  def names(self) -> tuple[str, ...]:
    """The reported parameters' names, in the order of params."""
    return tuple(p.upper() if p in self.exp_params else p for p in self.params)

  def starts(self) -> np.ndarray:
    """Every point of the starting grid: (num_starts, num_params)."""
    return np.asarray(list(itertools.product(*(self.grid[p] for p in self.params))), np.float64)

  def stack(self, x=None, d=None, u=None) -> np.ndarray:
    """The logs of the law's inputs, stacked: (len(inputs), n)."""
    given = {"x": x, "d": d, "u": u}
    missing = [k for k in self.inputs if given[k] is None]
    if missing:
      raise ValueError(f"law {self.name!r} takes inputs {self.inputs}; {missing[0]} ({INPUTS[missing[0]]}) is missing")
    return np.log(np.stack(np.broadcast_arrays(*(np.asarray(given[k], np.float64) for k in self.inputs))))

  def predict_logs(self, theta: np.ndarray, z: np.ndarray) -> np.ndarray:
    """The law's loss at stacked log inputs z."""
    with jax.enable_x64(True):
      return np.exp(np.asarray(self.log_predict(jnp.asarray(theta), jnp.asarray(z))))

  def predict(self, theta: np.ndarray, x: np.ndarray | None, d: np.ndarray, u: np.ndarray | None = None) -> np.ndarray:
    """The law's loss at (x, d, u); the inputs it does not take are ignored."""
    return self.predict_logs(theta, self.stack(x, d, u))


def _lse(*terms):
  """log(sum(exp(terms))), elementwise; written out because stacking for jax.nn.logsumexp is 3x slower."""
  top = functools.reduce(jnp.maximum, terms)
  top = jax.lax.stop_gradient(jnp.where(jnp.isfinite(top), top, 0.0))
  return top + jnp.log(sum(jnp.exp(t - top) for t in terms))


_SCALE = np.arange(0.0, 2.01, 0.5)  # Hoffmann's grid for exponents.
_OFFSET = np.arange(-1.0, 1.01, 0.5)  # ... for log E.
_LOGA = np.arange(0.0, 25.1, 5.0)  # ... for log A and log B.
_KAPLAN = np.asarray([0.05, 0.1, 0.25, 0.5, 1.0])  # Kaplan's exponents (0.076, 0.095) are small.
_LOG6 = float(np.log(6.0))  # C = 6 N D; a Python float keeps the float32 search in float32.


def _data_constrained(t, z):
  """Muennighoff et al.'s law with N' = N: D' = U + U R_D (1 - e^(-R / R_D)), R = D / U - 1."""
  lx, ld, lu = z
  lu = jnp.minimum(lu, ld)  # The unique data seen: no more than the data seen.
  r_d = jnp.exp(t[5])
  log_d_eff = lu + jnp.log1p(-r_d * jnp.expm1(-jnp.expm1(ld - lu) / r_d))
  return _lse(t[0] - t[1] * lx, t[2] - t[3] * log_d_eff, t[4])


def _broken(t, z):
  """One break of Caballero et al.'s smoothly broken power law, in log space."""
  (ld,) = z
  f = jnp.exp(t[4])
  return _lse(t[0] - t[1] * ld - t[2] * f * jnp.logaddexp(0.0, (ld - t[3]) / f), t[5])


LAWS: dict[str, Law] = {
  "multiplicative": Law(
    "multiplicative",
    "L = A * X^-alpha * D^-beta + E",
    ("a", "alpha", "beta", "e"),
    ("x", "d"),
    lambda t, z: _lse(t[0] - t[1] * z[0] - t[2] * z[1], t[3]),
    {"a": _LOGA, "alpha": _SCALE, "beta": _SCALE, "e": _OFFSET},
    ("a", "e"),
    2,
  ),
  "additive": Law(
    "additive",
    "L = E + A / X^alpha + B / D^beta",
    ("a", "alpha", "b", "beta", "e"),
    ("x", "d"),
    lambda t, z: _lse(t[0] - t[1] * z[0], t[2] - t[3] * z[1], t[4]),
    {"a": _LOGA, "alpha": _SCALE, "b": _LOGA, "beta": _SCALE, "e": _OFFSET},
    ("a", "b", "e"),
    3,
  ),
  "single": Law(
    "single",
    "L = A * D^-beta + E",
    ("a", "beta", "e"),
    ("d",),
    lambda t, z: _lse(t[0] - t[1] * z[0], t[2]),
    {"a": _LOGA, "beta": _SCALE, "e": _OFFSET},
    ("a", "e"),
    3,
  ),
  "rectified": Law(
    "rectified",
    "L = B / (D_l + D^beta) + E",
    ("b", "d_l", "beta", "e"),
    ("d",),
    lambda t, z: _lse(t[0] - jnp.logaddexp(t[1], t[2] * z[0]), t[3]),
    {"b": _LOGA, "d_l": np.arange(0.0, 10.1, 2.5), "beta": _SCALE, "e": _OFFSET},
    ("b", "d_l", "e"),
    4,
  ),
  # Gadre et al. 2024, with C = 6 X D and M = D / X: the additive law with alpha = beta = 2 eta.
  "overtrained": Law(
    "overtrained",
    "L = E + (A * M^eta + B * M^-eta) * C^-eta, C = 6 X D, M = D / X",
    ("a", "b", "eta", "e"),
    ("x", "d"),
    lambda t, z: _lse(t[0] - t[2] * (_LOG6 + 2 * z[0]), t[1] - t[2] * (_LOG6 + 2 * z[1]), t[3]),
    {"a": _LOGA, "b": _LOGA, "eta": _SCALE / 2, "e": _OFFSET},
    ("a", "b", "e"),
    3,
  ),
  # Kaplan et al. 2020, eq. 1.5; no irreducible loss.
  "kaplan": Law(
    "kaplan",
    "L = ((N_c / X)^(alpha_n / alpha_d) + D_c / D)^alpha_d",
    ("n_c", "alpha_n", "d_c", "alpha_d"),
    ("x", "d"),
    lambda t, z: t[3] * _lse(t[1] / t[3] * (t[0] - z[0]), t[2] - z[1]),
    {"n_c": _LOGA, "alpha_n": _KAPLAN, "d_c": _LOGA, "alpha_d": _KAPLAN},
    ("n_c", "d_c"),
    3,
  ),
  # Muennighoff et al. 2023 on the data side only (N' = N): repeated data is worth less.
  "data_constrained": Law(
    "data_constrained",
    "L = E + A / X^alpha + B / D'^beta, D' = U + U * R_D * (1 - e^(-R / R_D)), R = D / U - 1",
    ("a", "alpha", "b", "beta", "e", "r_d"),
    ("x", "d", "u"),
    _data_constrained,
    {"a": _LOGA[::2], "alpha": _SCALE, "b": _LOGA[::2], "beta": _SCALE, "e": _OFFSET, "r_d": np.log([3.0, 30.0])},
    ("a", "b", "e", "r_d"),
    3,
  ),
  # Caballero et al. 2022 with one break at D_1, of sharpness F: the slope turns from c0 to c0 + c1.
  "broken": Law(
    "broken",
    "L = E + A * D^-c0 * (1 + (D / D_1)^(1 / F))^(-c1 * F)",
    ("a", "c0", "c1", "d_1", "f", "e"),
    ("d",),
    _broken,
    {
      "a": _LOGA[::2],
      "c0": _SCALE[:3],
      "c1": _SCALE[1:],
      "d_1": np.arange(0.0, 12.1, 3.0),
      "f": np.log([0.3, 1.0]),
      "e": _OFFSET,
    },
    ("a", "d_1", "f", "e"),
    6,
  ),
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
  tied_range: np.ndarray  # (2, P): lowest and highest log-space parameters of the optima tied with the best.

  def to_json(self) -> dict:
    return {
      "law": self.law,
      "formula": LAWS[self.law].formula,
      "params": self.params,
      "theta": dict(zip(LAWS[self.law].params, map(float, self.theta))),
      "objective": self.objective,
      "converged": self.converged,
      "num_points": self.num_points,
      "num_starts": self.num_starts,
      "on_grid_edge": list(self.on_grid_edge),
    }


def objective(
  law: Law, theta: jax.Array, z: jax.Array, log_y: jax.Array, weights: jax.Array, delta: float
) -> jax.Array:
  """Weighted sum over points of Huber_delta(log prediction - log observation), at stacked log inputs z.

  Weights are how often a point counts: 1 for a plain fit, resampling counts for a bootstrap
  replicate, 0 for a point held out.
  """
  residual = law.log_predict(theta, z) - log_y
  return (weights * optax.losses.huber_loss(residual, delta=delta)).sum()


def _two_loop(g, S, Y, rho, count, slot):
  """The L-BFGS direction -H g of every lane; each lane's history is a ring of `memory` slots."""
  memory = S.shape[1]
  lanes = jnp.arange(g.shape[0])

  def pair(j):  # The j-th newest pair of every lane, and whether it exists.
    idx = (slot - 1 - j) % memory
    return S[lanes, idx], Y[lanes, idx], rho[lanes, idx], j < jnp.minimum(count, memory)

  def backward(q, j):
    s, y, r, valid = pair(j)
    a = jnp.where(valid, r * jnp.sum(s * q, -1), 0.0)
    return q - a[:, None] * y, a

  q, alphas = jax.lax.scan(backward, g, jnp.arange(memory))
  s, y, _, _ = pair(0)
  yy = jnp.sum(y * y, -1)
  gamma = jnp.where(
    (count > 0) & (yy > 0),
    jnp.sum(s * y, -1) / jnp.where(yy > 0, yy, 1.0),
    1.0 / jnp.maximum(jnp.linalg.norm(g, axis=-1), 1.0),
  )

  def forward(z, j_a):
    j, a = j_a
    s, y, r, valid = pair(j)
    return z + jnp.where(valid, a - r * jnp.sum(y * z, -1), 0.0)[:, None] * s, None

  z, _ = jax.lax.scan(forward, gamma[:, None] * q, (jnp.arange(memory), alphas), reverse=True)
  return -z


# The fitter is compute-bound: it keeps XLA's full optimisation even where a process asks for
# cheap compiles (the test suite does).
OPTIMISED = {"xla_backend_optimization_level": 3, "xla_llvm_disable_expensive_passes": False}


@functools.lru_cache(maxsize=None)
def _lbfgs(law: Law, delta: float, iters: int, ftol: float, gtol: float, dtype: str, memory: int = 10):
  """Jitted (init, run): `iters` L-BFGS iterations on every active lane at once.

  A lane is one start on one dataset. optax.lbfgs under vmap runs every lane's zoom line search
  until the slowest lane is done, and every lane for as long as the slowest one; here each
  iteration costs one value-and-gradient plus, only if some lane rejects the unit step, one
  batched evaluation of three shorter steps. Lanes stop by scipy's rules (relative decrease
  below ftol, or max |gradient| below gtol); a failed search first retries as steepest descent.
  """

  def value(theta, lane):
    return objective(law, theta, *lane, delta)

  vg = jax.vmap(jax.value_and_grad(value))
  v_steps = jax.vmap(jax.vmap(value, in_axes=(0, None)))

  def step(st, data):
    d = _two_loop(st["g"], st["S"], st["Y"], st["rho"], st["count"], st["slot"])
    steepest = -st["g"] / jnp.maximum(jnp.linalg.norm(st["g"], axis=-1), 1.0)[:, None]
    d = jnp.where((jnp.sum(d * st["g"], -1) < 0)[:, None], d, steepest)
    slope = jnp.sum(d * st["g"], -1)
    f1, g1 = vg(st["x"] + d, data)
    unit_ok = (f1 <= st["f"] + 1e-4 * slope) & jnp.isfinite(f1)

    def backtrack(_):
      # The minimiser of the quadratic through f(0), f'(0) and f(1), and two tenfold shorter steps.
      curvature = jnp.where(jnp.isfinite(f1), f1 - st["f"] - slope, jnp.inf)
      t_quad = jnp.clip(-slope / (2 * jnp.maximum(curvature, jnp.finfo(dtype).tiny)), 1e-3, 0.5)
      steps = t_quad[:, None] * jnp.asarray([1.0, 0.1, 0.01], dtype)
      f_steps = v_steps(st["x"][:, None, :] + steps[:, :, None] * d[:, None, :], data)
      ok = (f_steps <= st["f"][:, None] + 1e-4 * steps * slope[:, None]) & jnp.isfinite(f_steps)
      return jnp.where(ok.any(1), jnp.take_along_axis(steps, jnp.argmax(ok, 1)[:, None], 1)[:, 0], 0.0)

    t_back = jax.lax.cond(jnp.any(st["active"] & ~unit_ok), backtrack, lambda _: jnp.zeros_like(st["f"]), None)
    t = jnp.where(unit_ok, jnp.ones_like(t_back), t_back)
    moved = st["active"] & (t > 0)
    x_new = st["x"] + t[:, None] * d
    f_b, g_b = jax.lax.cond(jnp.any(moved & ~unit_ok), lambda _: vg(x_new, data), lambda _: (f1, g1), None)
    f_new, g_new = jnp.where(unit_ok, f1, f_b), jnp.where(unit_ok[:, None], g1, g_b)
    s, y = x_new - st["x"], g_new - st["g"]
    sy = jnp.sum(s * y, -1)
    store = moved & (sy > 1e-10 * jnp.sum(y * y, -1))
    at = (jnp.arange(memory)[None, :] == st["slot"][:, None]) & store[:, None]
    f = jnp.where(moved, f_new, st["f"])
    g = jnp.where(moved[:, None], g_new, st["g"])
    tiny = (st["f"] - f) <= ftol * jnp.maximum(jnp.maximum(jnp.abs(st["f"]), jnp.abs(f)), 1.0)
    flat = jnp.max(jnp.abs(g), -1) <= gtol
    retry = st["active"] & ~moved & (st["count"] > 0)
    return {
      "x": jnp.where(moved[:, None], x_new, st["x"]),
      "f": f,
      "g": g,
      "S": jnp.where(at[:, :, None], s[:, None, :], st["S"]),
      "Y": jnp.where(at[:, :, None], y[:, None, :], st["Y"]),
      "rho": jnp.where(at, (1.0 / jnp.where(store, sy, 1.0))[:, None], st["rho"]),
      "count": jnp.where(retry, 0, st["count"] + store),
      "slot": (st["slot"] + store) % memory,
      "active": st["active"] & ((moved & ~tiny & ~flat) | retry),
    }

  def init(x0, data):
    f, g = vg(x0, data)
    lanes, p = x0.shape
    return {
      "x": x0,
      "f": f,
      "g": g,
      "S": jnp.zeros((lanes, memory, p), dtype),
      "Y": jnp.zeros((lanes, memory, p), dtype),
      "rho": jnp.zeros((lanes, memory), dtype),
      "count": jnp.zeros(lanes, jnp.int32),
      "slot": jnp.zeros(lanes, jnp.int32),
      "active": jnp.isfinite(f),
    }

  return (
    jax.jit(init, compiler_options=OPTIMISED),
    jax.jit(lambda st, data: jax.lax.fori_loop(0, iters, lambda _, s: step(s, data), st), compiler_options=OPTIMISED),
  )


# The lane counts that compile, by dtype. The float32 search runs a large set in blocks of 512 and
# its last few lanes in a block of 64; the float64 polish (a few lanes per dataset) in blocks of 64.
_BLOCKS = {"float32": (64, 512), "float64": (64,)}
_POLISH = {"ftol": 0.0, "gtol": 1e-12, "dtype": "float64"}


def _by_blocks(fn: Callable, sizes: tuple[int, ...], *args):
  """fn over lanes (the leading axis of every array in args) in blocks of the given sizes.

  A fit compiles a handful of programs whatever its number of starts and datasets; on a CPU a
  block of 512 lanes runs as fast per lane as one batch of all of them.
  """
  n = len(jax.tree.leaves(args)[0])
  outs = []
  for start in range(0, n, sizes[-1]):
    size = next(s for s in sizes if s >= min(n - start, sizes[-1]))
    pick = np.minimum(np.arange(start, start + size), n - 1)  # Padded with copies of the last lane.
    out = jax.device_get(fn(*jax.tree.map(lambda a: a[pick], args)))
    outs.append(jax.tree.map(lambda a: a[: n - start], out))
  return jax.tree.map(lambda *parts: np.concatenate(parts), *outs)


def _minimize_lanes(
  law: Law,
  x0: np.ndarray,
  data: tuple[np.ndarray, ...],
  delta: float,
  max_iter: int,
  ftol: float,
  gtol: float,
  dtype: str = "float64",
  chunk: int = 10,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Runs every lane to its own convergence; finished lanes leave the batch between chunks."""
  init, run = _lbfgs(law, delta, chunk, ftol, gtol, dtype)
  x, f, g = np.array(x0, np.float64), np.full(len(x0), np.inf), np.zeros(len(x0))
  data = tuple(np.asarray(a, dtype) for a in data)
  state = _by_blocks(init, _BLOCKS[dtype][-1:], np.asarray(x0, dtype), data)  # Once: one block size.
  lanes, done = np.arange(len(x0)), 0
  while len(lanes) and done < max_iter:
    state = _by_blocks(run, _BLOCKS[dtype], state, tuple(a[lanes] for a in data))
    done += chunk
    out = ~state["active"] | (done >= max_iter)
    x[lanes[out]], f[lanes[out]] = state["x"][out], state["f"][out]
    g[lanes[out]] = np.abs(state["g"][out]).max(-1)
    lanes, state = lanes[~out], {k: v[~out] for k, v in state.items()}
  return x, np.where(np.isfinite(f), f, np.inf), g


def fit_many(
  law: Law,
  starts: np.ndarray,
  z: np.ndarray,
  log_y: np.ndarray,
  weights: np.ndarray | None = None,
  delta: float = 1e-3,
  max_iter: int = 500,
  ftol: float = 2.2e-9,
  gtol: float = 1e-5,
  polish: int = 8,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Optimises every start on every dataset at once, as vectorised JAX programs.

  starts: (S, P). z: (R, k, n) stacked log inputs (`Law.stack`) for R datasets of n points, or
  (k, n) for one; log_y, weights: (R, n) or (n,). The `polish` best optima of each dataset are
  refined once more with tight tolerances. Returns theta (R, S, P), objective (R, S) and final
  max |gradient| (R, S).
  """
  z = np.asarray(z, np.float64)
  z = z[None] if z.ndim == 2 else z
  log_y = np.atleast_2d(np.asarray(log_y, np.float64))
  weights = np.ones_like(log_y) if weights is None else np.atleast_2d(np.asarray(weights, np.float64))
  r, n = np.broadcast_shapes(z[:, 0].shape, log_y.shape, weights.shape)
  n_pad = -(-n // 8) * 8  # Zero-weight padding points: nearby sizes share compiled programs.
  pad = ((0, 0), (0, n_pad - n))
  data = [
    np.pad(np.broadcast_to(z, (r, *z.shape[1:])), ((0, 0), *pad)),
    *(np.pad(np.broadcast_to(a, (r, n)), pad) for a in (log_y, weights)),
  ]
  starts = np.asarray(starts, np.float64)
  s = len(starts)
  lane_data = tuple(np.repeat(a, s, axis=0) for a in data)
  with jax.enable_x64(True):
    # The search runs in float32 (twice the throughput); the best optima are polished in float64.
    theta, value, grad = _minimize_lanes(
      law, np.tile(starts, (r, 1)), lane_data, delta, max_iter, ftol, gtol, "float32" if polish else "float64"
    )
    if polish:  # Exact float64 objectives of the float32 optima (the polish's first evaluation).
      init = _lbfgs(law, delta, 10, **_POLISH)[0]
      value = _by_blocks(init, _BLOCKS["float64"], theta, lane_data)["f"]
      value = np.where(np.isfinite(value), value, np.inf)
    theta, value, grad = theta.reshape(r, s, -1), value.reshape(r, s), grad.reshape(r, s)
    if polish:
      best = np.argsort(value, axis=1)[:, :polish]
      rows = np.repeat(np.arange(r), best.shape[1])
      x0 = theta[rows, best.ravel()]
      pol = _minimize_lanes(law, x0, tuple(a[rows] for a in data), delta, 5 * max_iter, **_POLISH)
      better = pol[1] < value[rows, best.ravel()]
      for arr, new in zip((theta, value, grad), pol):
        arr[rows[better], best.ravel()[better]] = new[better]
  return theta, value, grad


def check_points(law: Law, d, y, x=None, u=None) -> tuple[dict[str, np.ndarray], np.ndarray]:
  """Validated float arrays: the law's inputs by name, and y; errors name the column and the row."""
  given = {"x": x, "d": d, "u": u}
  for key in ("x", "u"):
    if (key in law.inputs) != (given[key] is not None):
      state = "is missing" if given[key] is None else "was given"
      raise ValueError(f"law {law.name!r} takes inputs {law.inputs}; {key} ({INPUTS[key]}) {state}")
  out = {}
  for key, arr in (*((k, given[k]) for k in law.inputs), ("y", y)):
    arr = np.asarray(arr, np.float64)
    bad = np.flatnonzero(~(np.isfinite(arr) & (arr > 0)))
    if len(bad):
      raise ValueError(f"column {key!r} must be positive and finite; row {int(bad[0])} is {arr[bad[0]]}")
    out[key] = arr
  y = out.pop("y")
  if len(y) < len(law.params):
    raise ValueError(f"{len(y)} points cannot determine the {len(law.params)} parameters of law {law.name!r}")
  return out, y


def fit(
  law: Law | str,
  d: Sequence[float],
  y: Sequence[float],
  x: Sequence[float] | None = None,
  delta: float = 1e-3,
  starts: np.ndarray | None = None,
  grad_tol: float = 1e-5,
  weights: np.ndarray | None = None,
  u: Sequence[float] | None = None,
) -> Fit:
  """Fits a law to points (x, d, u; y) from every start of its grid; keeps the best."""
  law = get_law(law) if isinstance(law, str) else law
  inputs, y = check_points(law, d, y, x, u)
  starts = law.starts() if starts is None else np.asarray(starts, np.float64)
  theta, value, grad_norm = (a[0] for a in fit_many(law, starts, law.stack(**inputs), np.log(y), weights, delta))
  order = np.argsort(value)
  best = int(order[0])
  edge = tuple(p for i, p in enumerate(law.params) if not min(law.grid[p]) <= theta[best, i] <= max(law.grid[p]))
  if edge:
    warnings.warn(f"{law.name} fit: optimum of {list(edge)} lies outside the starting grid", stacklevel=2)
  _, first = np.unique(np.round(theta[order], 3), axis=0, return_index=True)
  candidates = theta[order][np.sort(first)][:4]
  tied = theta[value <= value[best] + TIE_RTOL * abs(value[best])]
  return Fit(
    law.name,
    law.natural(theta[best]),
    theta[best],
    float(value[best]),
    bool(grad_norm[best] < grad_tol),
    len(y),
    len(starts),
    edge,
    candidates,
    np.stack([tied.min(0), tied.max(0)]),
  )


def refit_weighted(law: Law, fit_: Fit, z: np.ndarray, y, weights: np.ndarray, delta: float) -> np.ndarray:
  """Best log-space parameters for each row of `weights` (R, n), started from the fit's optima."""
  theta, value, _ = fit_many(law, fit_.candidates, z, np.log(y), weights, delta)
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
    return {
      k: (float(np.percentile([dr[k] for dr in draws], lo)), float(np.percentile([dr[k] for dr in draws], hi)))
      for k in draws[0]
    }

  def prediction_interval(self, law: Law, x, d, u=None) -> tuple[np.ndarray, np.ndarray]:
    """Percentile band of the law's prediction at (x, d, u)."""
    z = law.stack(x, d, u)
    preds = np.stack([law.predict_logs(t, z) for t in self.thetas])
    return np.percentile(preds, 50 * (1 - self.level), axis=0), np.percentile(preds, 50 * (1 + self.level), axis=0)


def bootstrap(
  law: Law | str,
  fit_: Fit,
  d,
  y,
  x=None,
  replicates: int = 1000,
  delta: float = 1e-3,
  level: float = 0.9,
  seed: int = 0,
  u=None,
) -> Bootstrap:
  """Resamples the points with replacement `replicates` times and refits each, all at once."""
  law = get_law(law) if isinstance(law, str) else law
  inputs, y = check_points(law, d, y, x, u)
  n = len(y)
  counts = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=replicates).astype(np.float64)
  return Bootstrap(refit_weighted(law, fit_, law.stack(**inputs), y, counts, delta), level)


@dataclasses.dataclass(frozen=True)
class Validation:
  """How well a law describes and extrapolates a set of points."""

  fitted_error: float  # Delta_e: mean |pred - obs| on the points fitted (all but the held-out ones).
  heldout_error: float | None  # Delta_h: the same on the held-out points.
  heldout_relative_errors: list[float]  # |pred - obs| / obs of each held-out point.
  loo_error: float  # Mean |pred - obs| of each point predicted by a fit without it.
  holdout: str
  fitted_max: dict[str, float]  # The largest x and d among the points fitted without the held-out ones.
  fitted_values: dict[str, int]  # How many distinct values of x and d those points have.
  validated_max: dict[str, float]  # The largest x and d among the held-out points: how far the law was validated.

  def to_json(self) -> dict:
    """The fields, and validated_ratio: validated_max / fitted_max of each input."""
    ratio = {k: v / self.fitted_max[k] for k, v in self.validated_max.items()}
    return {**dataclasses.asdict(self), "validated_ratio": ratio}


def heldout_mask(x, d, holdout: str) -> np.ndarray:
  """Points held out for extrapolation: those at the largest x, or at the largest d."""
  if holdout == "largest_x":
    if x is None:
      raise ValueError("holdout 'largest_x' needs an x column")
    return np.asarray(x) == np.max(x)
  if holdout == "largest_d":
    return np.asarray(d) == np.max(d)
  raise ValueError(f"unknown holdout {holdout!r}; allowed: 'largest_x', 'largest_d'")


def holdout_problem(law: Law, x, d, holdout: str) -> str | None:
  """Why a fit without the held-out points could not determine the law, or None if it can: too few
  points left, or too few values of an input (with two values of x, say, the additive law's
  A / X^alpha is two numbers, which cannot fix A, alpha and E apart)."""
  kept = ~heldout_mask(x, d, holdout)
  if kept.sum() < len(law.params):
    return f"holding out {holdout} leaves {int(kept.sum())} points for {len(law.params)} parameters"
  for name, values in (("x", x), ("d", d)):
    left = len(np.unique(np.asarray(values)[kept])) if name in law.inputs else law.min_values
    if left < law.min_values:
      return (
        f"holding out {holdout} leaves {left} distinct value{'s' * (left != 1)} of {name}; the {law.name} "
        f"law needs {law.min_values} to determine its parameters"
      )
  return None


def validate(
  law: Law | str,
  d,
  y,
  x=None,
  holdout: str = "largest_d",
  delta: float = 1e-3,
  full: Fit | None = None,
  u=None,
) -> Validation:
  """Fits without the held-out points and predicts them; and leave-one-out over all points.

  `full`, the fit to all points if the caller has it, seeds the leave-one-out refits.
  """
  law = get_law(law) if isinstance(law, str) else law
  inputs, y = check_points(law, d, y, x, u)
  problem = holdout_problem(law, inputs.get("x"), inputs["d"], holdout)
  if problem:
    raise ValueError(problem)
  mask = heldout_mask(inputs.get("x"), inputs["d"], holdout)
  kept = ~mask
  z = law.stack(**inputs)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    part = fit(law, d, y, x=x, u=u, delta=delta, weights=kept.astype(np.float64))
    full = full or fit(law, d, y, x=x, u=u, delta=delta)
  pred = law.predict_logs(part.theta, z)
  n = len(y)
  loo = refit_weighted(law, full, z, y, 1.0 - np.eye(n), delta)
  loo_pred = np.asarray([law.predict_logs(loo[i], z[:, i : i + 1])[0] for i in range(n)])
  scales = {k: v for k, v in inputs.items() if k in ("x", "d")}
  return Validation(
    fitted_error=float(np.mean(np.abs(pred[kept] - y[kept]))),
    heldout_error=float(np.mean(np.abs(pred[mask] - y[mask]))) if mask.any() else None,
    heldout_relative_errors=[float(v) for v in np.abs(pred[mask] - y[mask]) / y[mask]],
    loo_error=float(np.mean(np.abs(loo_pred - y))),
    holdout=holdout,
    fitted_max={k: float(v[kept].max()) for k, v in scales.items()},
    fitted_values={k: len(np.unique(v[kept])) for k, v in scales.items()},
    validated_max={k: float(v[mask].max()) for k, v in scales.items()},
  )


# When a fit's parameters count as not determined by its points (`undetermined`).
TIE_RTOL = 1e-6  # Optima whose objective is within this fraction of the best one tie with it.
TIE_SPREAD = 0.05  # Tied optima further apart than this (an exponent; log of A, E, ...: 5%) leave it open.
RUNAWAY = 10.0  # An optimum this far outside its starting grid (an exponent; decades of A, E, ...) ran away.
WIDE = 1.0  # A 90% interval of an exponent wider than this (Hoffmann's grid spans 0 to 2) ...
WIDE_DECADES = 3.0  # ... or of A, E, ... over more decades than this.


def undetermined(
  law: Law | str,
  fit_: Fit,
  d,
  y,
  x=None,
  u=None,
  boot: Bootstrap | None = None,
  validation: Validation | None = None,
) -> dict[str, str]:
  """The parameters that the points do not determine, each with why; {} for a determined fit.

  A parameter is not determined when
  - the points are too few for the law: fewer distinct points than parameters, or fewer distinct values of x or
    d than the law needs (`min_values`): then none is;
  - the optima of the starts that tie with the best objective (within TIE_RTOL) differ in it by more than
    TIE_SPREAD: the objective is flat along it (Huber's linear part, a term that vanishes);
  - its optimum lies more than RUNAWAY outside its starting grid: an exponent more than 10 beyond it, or a
    log-space parameter (A, E, ...) more than 10 decades beyond it, such as E -> 0 or A = 1e45;
  - its linearised 90% interval (least-squares standard errors from the Jacobian of the log predictions at the
    optimum, scaled by the residuals) or, with a bootstrap, its percentile interval is wider than WIDE
    (exponents) or spans more than WIDE_DECADES decades (A, E, ...). The linearised one sees what no data can
    move (a vanishing term, two parameters that only act together); the bootstrap sees what the data's
    sampling moves;
  - with a validation: the mean leave-one-out error exceeds the range of the losses, so the fit hangs on single
    points: then none is.
  """
  law = get_law(law) if isinstance(law, str) else law
  inputs, y = check_points(law, d, y, x, u)
  z = law.stack(**inputs)
  logs = np.asarray([p in law.exp_params for p in law.params])
  unit = np.where(logs, np.log(10.0), 1.0)  # Log-space parameters are judged in decades.
  reasons: dict[str, list[str]] = {n: [] for n in law.names}

  def flag(which, reason):  # reason: a string, or a function of the parameter's index.
    for i in np.flatnonzero(which):
      reasons[law.names[i]].append(reason(i) if callable(reason) else reason)

  def interval(lo, hi, what):
    wide = np.where(logs, (hi - lo) / unit > WIDE_DECADES, (hi - lo) > WIDE)
    flag(wide, lambda i: f"{what} {_span(law, i, lo[i], hi[i])}")

  everything = np.ones(len(law.params), bool)
  distinct = np.unique(z, axis=1).shape[1]
  if distinct < len(law.params):
    flag(everything, f"{distinct} distinct points for {len(law.params)} parameters")
  for k in ("x", "d"):
    values = len(np.unique(inputs[k])) if k in inputs else law.min_values
    if values < law.min_values:
      flag(everything, f"{values} distinct values of {k}; the {law.name} law needs {law.min_values}")
  lo, hi = fit_.tied_range
  flag((hi - lo) > TIE_SPREAD, lambda i: f"equal-objective optima span {_span(law, i, lo[i], hi[i])}")
  grid_lo, grid_hi = (np.asarray([f(law.grid[p]) for p in law.params]) for f in (np.min, np.max))
  outside = np.maximum(grid_lo - fit_.theta, fit_.theta - grid_hi) / unit
  flag(
    outside > RUNAWAY, lambda i: f"optimum {outside[i]:.3g}{' decades' if logs[i] else ''} outside the starting grid"
  )
  half = statistics.NormalDist().inv_cdf(0.95) * standard_errors(law, fit_.theta, z, y)
  with np.errstate(invalid="ignore"):  # inf - inf where a parameter has no finite error.
    interval(fit_.theta - half, fit_.theta + half, "linearised 90% interval")
  if boot is not None:
    level = 50 * (1 - boot.level), 50 * (1 + boot.level)
    interval(*np.percentile(boot.thetas, level, axis=0), f"{100 * boot.level:.0f}% bootstrap interval")
  if validation is not None and validation.loo_error > np.ptp(y):
    flag(everything, f"leave-one-out error {validation.loo_error:.3g} exceeds the losses' range {np.ptp(y):.3g}")
  return {n: "; ".join(r) for n, r in reasons.items() if r}


def standard_errors(law: Law, theta: np.ndarray, z: np.ndarray, y: np.ndarray) -> np.ndarray:
  """Least-squares standard errors of the log-space parameters, linearised at theta: sigma * sqrt((J^T J)^-1)_pp
  for J the Jacobian of the log predictions and sigma^2 the residuals' mean square over the degrees of freedom;
  inf for a parameter that moves no prediction that the others cannot move too."""
  with jax.enable_x64(True):
    jac = np.asarray(jax.jacfwd(law.log_predict)(jnp.asarray(theta), jnp.asarray(z)))
  residual = np.log(y) - np.log(law.predict_logs(theta, z))
  sigma = np.sqrt(np.sum(residual**2) / max(len(y) - len(theta), 1))
  out = np.full(len(theta), np.inf)
  for p in range(len(theta)):
    others = np.delete(jac, p, axis=1)  # (J^T J)^-1_pp is 1 / |the part of J_p that the others do not span|^2.
    alone = np.linalg.norm(jac[:, p] - others @ np.linalg.lstsq(others, jac[:, p], rcond=None)[0])
    if alone > 0:
      out[p] = sigma / alone
  return out


def _span(law: Law, i: int, lo: float, hi: float) -> str:
  """A log-space parameter's range as natural values and decades; an exponent's as its ends."""
  if law.params[i] not in law.exp_params:
    return f"[{lo:.3g}, {hi:.3g}]"
  with np.errstate(over="ignore"):
    return f"[{np.exp(lo):.3g}, {np.exp(hi):.3g}] ({(hi - lo) / np.log(10.0):.3g} decades)"
