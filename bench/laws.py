"""The scaling-law fit benchmark (`python -m bench laws`): fit the additive law from Hoffmann's full
starting grid (4,500 starts) twice, vectorised (`scaling.laws`, one JAX program) and the obvious way
(a Python loop of scipy L-BFGS-B with exact gradients), on the same data; then time bootstrap
replicates of the same fit."""

from __future__ import annotations

import time

import numpy as np
import scipy.optimize  # A dependency of jax: installed wherever jax is.

from scaling import laws


def synthetic_points(num_points: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(x, d, y) from a known additive law with 1% multiplicative noise."""
  rng = np.random.default_rng(seed)
  x = np.exp(rng.uniform(np.log(1e7), np.log(1e10), num_points))
  d = np.exp(rng.uniform(np.log(1e3), np.log(1e6), num_points))
  y = 1.7 + 400.0 / x**0.34 + 410.0 / d**0.28
  return x, d, y * (1 + 0.01 * rng.standard_normal(num_points))


def _additive_objective_and_grad(theta, log_x, log_d, log_y, delta):
  """Hoffmann's objective for the additive law and its exact gradient, in numpy."""
  a, alpha, b, beta, e = theta
  terms = np.stack([a - alpha * log_x, b - beta * log_d, np.full_like(log_x, e)])
  top = terms.max(axis=0)
  w = np.exp(terms - top)
  total = w.sum(axis=0)
  r = top + np.log(total) - log_y
  huber = np.where(np.abs(r) <= delta, 0.5 * r**2, delta * (np.abs(r) - 0.5 * delta))
  dr = np.clip(r, -delta, delta)  # d huber / d r.
  p = w / total  # d log L / d term.
  grad = np.asarray(
    [(dr * p[0]).sum(), -(dr * p[0] * log_x).sum(), (dr * p[1]).sum(), -(dr * p[1] * log_d).sum(), (dr * p[2]).sum()]
  )
  return huber.sum(), grad


def scipy_loop(starts, log_x, log_d, log_y, delta):
  """The obvious way: one scipy L-BFGS-B minimisation per start; returns the best (theta, value)."""
  best = (None, np.inf)
  for x0 in starts:
    res = scipy.optimize.minimize(
      _additive_objective_and_grad, x0, args=(log_x, log_d, log_y, delta), jac=True, method="L-BFGS-B"
    )
    if res.fun < best[1]:
      best = (res.x, float(res.fun))
  return best


def measure(num_points: int, replicates: int, delta: float = 1e-3) -> list[tuple[str, str]]:
  """Rows of the laws benchmark table."""
  law = laws.get_law("additive")
  x, d, y = synthetic_points(num_points)
  starts = law.starts()
  log_x, log_d, log_y = np.log(x), np.log(d), np.log(y)

  laws.fit(law, d, y, x=x, delta=delta)  # Compile once; the timing below is of the fit itself.
  t0 = time.perf_counter()
  fit = laws.fit(law, d, y, x=x, delta=delta)
  t_vec = time.perf_counter() - t0

  t0 = time.perf_counter()
  _, scipy_value = scipy_loop(starts, log_x, log_d, log_y, delta)
  t_scipy = time.perf_counter() - t0

  laws.bootstrap(law, fit, d, y, x=x, replicates=replicates, delta=delta)  # Compile.
  t0 = time.perf_counter()
  laws.bootstrap(law, fit, d, y, x=x, replicates=replicates, delta=delta)
  t_boot = time.perf_counter() - t0
  return [
    ("points / starts", f"{num_points} / {len(starts)}"),
    ("vectorised objective", f"{fit.objective:.10g}"),
    ("scipy loop objective", f"{scipy_value:.10g}"),
    ("vectorised no worse", str(fit.objective <= scipy_value * (1 + 1e-9) + 1e-15)),
    ("vectorised time (s)", f"{t_vec:.2f}"),
    ("scipy loop time (s)", f"{t_scipy:.2f}"),
    ("speed-up", f"{t_scipy / t_vec:.1f}x"),
    (f"{replicates} bootstrap replicates (s)", f"{t_boot:.2f}"),
  ]
