"""Which runs next: a study's untried runs that most sharpen its law's prediction at a target, for a budget; and a
simulation that replays published runs as if bought one at a time, to compare ways of choosing them.

    python -m analysis.design --workdir W --budget FLOPS [--target N,D_f|PARAM] [--task T|all] [--method M|all]
        [--x non_embedding_params|pretrain_tokens] [--law L] [--config C.py]
    python -m analysis.design --csv RUNS.csv --x N --d D --y loss --budget B [--cost C] [--law L] [--target N,D|PARAM]
    python -m analysis.design --simulate LIN.csv FAMILY.csv ... [--fraction 0.2 0.05] [--repeats 10] [--out ROWS.csv]

The law is linearised at its fit to the runs finished: its log-space parameters get the Gaussian uncertainty of a
least-squares fit (each run's noise in log loss the fit's residual deviation, at least `NOISE`; a weak prior keeps
undetermined parameters finite), and a run would cut the variance of the target (the log loss predicted at a point,
or a parameter such as alpha) by cov(target, run)^2 / (var(run) + noise^2). Cheap runs cut most per FLOP but may
leave too little for a far one, so runs are bought by plan (`plan`). With --workdir, each task/method asked for is a
cell with its own fit (their targets' variances add up); the proposed runs are printed with their FLOPs and written
to W/design/next.flags as the study field `only`, which any launcher takes with --flagfile. With --csv, the table's
rows without a loss are the runs to choose among. --simulate replays CSVs of analysis.lin and analysis.colpret at
each fraction and prints one table. docs/design.md is the guide.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import sys
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import scipy.linalg
from etils import epath

from analysis import frames
from scaling import grid, kinds, laws, methods, results
from scaling import model as model_lib

NOISE = 0.01  # Standard deviation of one run's log loss about the law: seeds, data order, evaluation.
PRIOR = 10.0  # Standard deviation of the Gaussian prior on each log-space parameter about the fit.


@dataclasses.dataclass(frozen=True)
class Problem:
  """Runs to choose among (their stacked log inputs, costs and, in a simulation, losses) and a target."""

  name: str
  z: np.ndarray  # (k, n) stacked log inputs of the candidate runs (`Law.stack`).
  cost: np.ndarray  # (n,) each run's cost.
  y: np.ndarray  # (n,) each run's loss (known in a simulation).
  z_target: np.ndarray  # (k, m) the target points.
  y_target: np.ndarray  # (m,) their losses (known in a simulation).
  param: int | None = None  # The law's parameter to narrow (its index), in place of the prediction at the target.


@functools.lru_cache(maxsize=None)
def _jacobian(law: laws.Law) -> Callable:
  return jax.jit(jax.jacfwd(law.log_predict))


def jacobians(law: laws.Law, theta: np.ndarray, z: np.ndarray) -> np.ndarray:
  """d log L / d theta at each point of z: (n, P)."""
  with jax.enable_x64(True):
    return np.asarray(_jacobian(law)(jnp.asarray(theta, jnp.float64), jnp.asarray(z, jnp.float64)))


def posterior(jac: np.ndarray, noise: float | np.ndarray = NOISE) -> np.ndarray:
  """Covariance of the log-space parameters after runs with these Jacobian rows (each observed with `noise` in log
  loss, one for all or one each) and the prior."""
  weights = np.broadcast_to(np.asarray(noise, np.float64) ** -2.0, jac.shape[:1])
  return np.linalg.inv(jac.T @ (jac * weights[:, None]) + np.eye(jac.shape[1]) / PRIOR**2)


def target_gradient(law: laws.Law, theta: np.ndarray, problem: Problem) -> np.ndarray:
  """d target / d theta: of the target points' mean log loss, or of the parameter to narrow."""
  if problem.param is not None:
    return np.eye(len(theta))[problem.param]
  return jacobians(law, theta, problem.z_target).mean(0)


@dataclasses.dataclass(frozen=True)
class Linear:
  """A law linearised at its fit: each run's d log L / d theta, the target's gradient, and each run's noise."""

  jac: np.ndarray  # (n, P)
  g: np.ndarray  # (P,)
  noise: np.ndarray  # (n,) in log loss.

  def variance(self, chosen: np.ndarray) -> float:
    """The target's variance once the runs chosen are observed."""
    return float(self.g @ posterior(self.jac[chosen], self.noise[chosen]) @ self.g)


def linearise(law: laws.Law, theta: np.ndarray, problem: Problem, bought: np.ndarray) -> Linear:
  """The law at theta over a problem's runs, each with the noise of its fit to the runs bought (`residual_noise`)."""
  jac = jacobians(law, theta, problem.z)
  noise = residual_noise(law, theta, problem.z[:, bought], problem.y[bought])
  return Linear(jac, target_gradient(law, theta, problem), np.full(len(jac), noise))


def combine(parts: list[Linear]) -> Linear:
  """Independent laws as one: their runs in turn, and as target the sum of their targets' variances."""
  jac = scipy.linalg.block_diag(*(p.jac for p in parts))
  return Linear(jac, np.concatenate([p.g for p in parts]), np.concatenate([p.noise for p in parts]))


def plan(linear: Linear, cost: np.ndarray, bought: np.ndarray, left: float) -> tuple[int, float]:
  """The affordable run that begins the best plan for the budget left, and the target variance that plan reaches.

  Each affordable run is tried first; the rest of the budget then goes greedily to the run that cuts the target's
  variance most per unit of cost. Cheap runs cut most per cost, but may leave too little for a far one: the plan
  weighs what a first run leaves affordable.
  """
  jac, g, noise = linear.jac, linear.g, linear.noise
  best = (-1, np.inf)
  for first in np.flatnonzero(~bought & (cost <= left)):
    chosen = bought.copy()
    chosen[first] = True
    while True:
      open_ = np.flatnonzero(~chosen & (cost <= left - cost[chosen & ~bought].sum()))
      if not len(open_):
        break
      cov = posterior(jac[chosen], noise[chosen])
      cross, var = jac[open_] @ cov @ g, np.einsum("np,pq,nq->n", jac[open_], cov, jac[open_])
      chosen[open_[np.argmax(cross**2 / (var + noise[open_] ** 2) / cost[open_])]] = True  # Sherman-Morrison.
    variance = linear.variance(chosen)
    if variance < best[1]:
      best = (int(first), variance)
  return best


def information_gain(law: laws.Law, theta: np.ndarray, problem: Problem, bought: np.ndarray) -> np.ndarray:
  """For each run, the log-determinant gain of the parameters' information (D-optimal design)."""
  jac = jacobians(law, theta, problem.z)
  return np.log1p(np.einsum("np,pq,nq->n", jac, posterior(jac[bought]), jac) / NOISE**2)


# A strategy: (law, fit of the runs bought so far, problem, bought mask, budget left, rng) -> the next run to buy,
# one that is affordable (called only while there is one).
Strategy = Callable[[laws.Law, np.ndarray, Problem, np.ndarray, float, np.random.Generator], int]


def _affordable(problem: Problem, bought: np.ndarray, left: float) -> np.ndarray:
  return np.flatnonzero(~bought & (problem.cost <= left))


def residual_noise(law: laws.Law, theta: np.ndarray, z: np.ndarray, y: np.ndarray) -> float:
  """A run's noise about the law in log loss: the fit's residual standard deviation (over its degrees of freedom),
  at least NOISE."""
  residual = np.log(y) - np.log(law.predict_logs(theta, z))
  dof = len(y) - len(theta)
  return max(NOISE, float(np.sqrt(np.sum(residual**2) / dof))) if dof > 0 else NOISE


def _narrowing(law, theta, problem, bought, left, rng) -> int:
  return plan(linearise(law, theta, problem, bought), problem.cost, bought, left)[0]


def _d_optimal(law, theta, problem, bought, left, rng) -> int:
  runs = _affordable(problem, bought, left)
  return int(runs[np.argmax(information_gain(law, theta, problem, bought)[runs] / problem.cost[runs])])


STRATEGIES: dict[str, Strategy] = {
  "narrowing": _narrowing,
  "random": lambda law, theta, problem, bought, left, rng: int(rng.choice(_affordable(problem, bought, left))),
  "cheapest": lambda law, theta, problem, bought, left, rng: int(
    min(_affordable(problem, bought, left), key=lambda i: problem.cost[i])
  ),
  "largest": lambda law, theta, problem, bought, left, rng: int(
    max(_affordable(problem, bought, left), key=lambda i: problem.cost[i])
  ),
  "d-optimal": _d_optimal,
}


def fit_theta(law: laws.Law, problem: Problem, bought: np.ndarray, starts: np.ndarray) -> np.ndarray:
  """The law's best log-space parameters on the runs bought."""
  theta, value, _ = laws.fit_many(law, starts, problem.z, np.log(problem.y), bought.astype(np.float64))
  return theta[0, np.argmin(value[0])]


def heldout_error(law: laws.Law, theta: np.ndarray, problem: Problem) -> float:
  """Mean relative error of the law's prediction at the target points."""
  pred = law.predict_logs(theta, problem.z_target)
  return float(np.mean(np.abs(pred - problem.y_target) / problem.y_target))


# The strategies that choose by the law fitted to the runs bought so far: they refit after every run.
FITTED = ("narrowing", "d-optimal")


def replay(
  law: laws.Law, problem: Problem, strategy: str, start: np.ndarray, budget: float, theta: np.ndarray, seed: int
) -> np.ndarray:
  """The runs a strategy buys, from the `start` runs (whose fit is theta) until no run left is affordable."""
  rng = np.random.default_rng(seed)
  bought = np.zeros(len(problem.cost), bool)
  bought[start] = True
  thinned = law.starts()[:: max(1, len(law.starts()) // 64)]
  while len(_affordable(problem, bought, left := budget - problem.cost[bought].sum())):
    bought[STRATEGIES[strategy](law, theta, problem, bought, left, rng)] = True
    if strategy in FITTED:  # From the last optimum and a thinned grid: one run moves the optimum a little.
      theta = fit_theta(law, problem, bought, np.vstack([theta, thinned]))
  return bought


def simulate(
  law: laws.Law,
  problems: list[Problem],
  budget: float = 0.2,
  repeats: int = 10,
  first: int | None = None,
  strategies: tuple[str, ...] = tuple(STRATEGIES),
  progress: Callable[[str], None] = lambda s: None,
) -> pd.DataFrame:
  """Every strategy on every problem, from `repeats` sets of `first` starting runs (default: as many as the law has
  parameters) drawn from the cheaper half, with `budget` of every run's cost to spend; one row per (problem,
  repeat, strategy) with the held-out error of the law fitted to the runs bought, and that of fitting every run
  (`all`)."""
  first = len(law.params) if first is None else first
  rows = []
  for problem in problems:
    errors: dict[bytes, float] = {}  # Strategies often buy the same runs: each set is fitted once.

    def error(bought: np.ndarray) -> float:
      if bought.tobytes() not in errors:
        errors[bought.tobytes()] = heldout_error(law, fit_theta(law, problem, bought, law.starts()), problem)
      return errors[bought.tobytes()]

    total = problem.cost.sum()
    cheap = np.argsort(problem.cost)[: max(first, len(problem.cost) // 2)]
    for repeat in range(repeats):
      start = np.random.default_rng([repeat, 7]).choice(cheap, first, replace=False)
      theta = fit_theta(law, problem, np.isin(np.arange(len(problem.cost)), start), law.starts())
      for name in strategies:
        bought = replay(law, problem, name, start, budget * total, theta, repeat)
        rows.append(
          {
            "problem": problem.name,
            "repeat": repeat,
            "strategy": name,
            "error": error(bought),
            "all": error(np.ones_like(bought)),
            "runs": int(bought.sum()),
            "spent": problem.cost[bought].sum() / total,
          }
        )
      done = ", ".join(f"{r['strategy']} {r['error']:.4f}" for r in rows[-len(strategies) :])
      progress(f"{problem.name} repeat {repeat}: {done} (all runs {rows[-1]['all']:.4f})")
  return pd.DataFrame(rows)


def lin_problems(frame: pd.DataFrame) -> list[Problem]:
  """One problem per model of an `analysis.lin` CSV: its curve below the largest d_f, the largest as the target;
  a run's cost is N * d_f."""
  law = laws.get_law("rectified")
  problems = []
  for model, curve in frame.groupby("model", sort=False):
    curve = curve.sort_values("d_f")
    pool, target = curve.iloc[:-1], curve.iloc[-1:]
    problems.append(
      Problem(
        str(model),
        law.stack(d=pool["d_f"].to_numpy(float)),
        pool["N"].to_numpy(float) * pool["d_f"].to_numpy(float),
        pool["loss"].to_numpy(float),
        law.stack(d=target["d_f"].to_numpy(float)),
        target["loss"].to_numpy(float),
      )
    )
  return problems


def colpret_problems(frame: pd.DataFrame, law: laws.Law) -> list[Problem]:
  """One problem of an `analysis.colpret` CSV: every run of the smaller models as candidates, the largest model's
  runs as the target; a run's cost is 6 N D."""
  largest = frame["N"] == frame["N"].max()
  pool, target = frame[~largest], frame[largest]
  stack = lambda part: law.stack(x=part["N"].to_numpy(float), d=part["D"].to_numpy(float))  # noqa: E731
  return [
    Problem(
      str(frame["family"].iloc[0]),
      stack(pool),
      6 * pool["N"].to_numpy(float) * pool["D"].to_numpy(float),
      pool["loss"].to_numpy(float),
      stack(target),
      target["loss"].to_numpy(float),
    )
  ]


def source_problems(frame: pd.DataFrame, law: str | None = None) -> tuple[str, laws.Law, list[Problem]]:
  """A published CSV's label, law (default: rectified for Lin et al.'s curves, overtrained for a ColPret family)
  and problems, told apart by their columns."""
  if {"model", "N", "d_f", "loss", "dataset"} <= set(frame.columns):
    label = f"Lin et al., {frame['dataset'].iloc[0]} ({frame['model'].nunique()} curves)"
    return label, laws.get_law(law or "rectified"), lin_problems(frame)
  if {"family", "N", "D", "loss"} <= set(frame.columns):
    law_ = laws.get_law(law or "overtrained")
    return f"ColPret, {frame['family'].iloc[0]}", law_, colpret_problems(frame, law_)
  raise ValueError(
    f"a CSV with columns {list(frame.columns)}; allowed: one of analysis.lin (model, N, d_f, loss, dataset) or "
    "analysis.colpret (family, N, D, loss)"
  )


def _vocab_size(run: grid.Run, record: dict) -> int:
  """The vocabulary a finished run's model had: its training FLOPs per token are affine in it."""
  size, block, seq_len = run.config["size"], run.config["block"], run.config["train"]["seq_len"]
  f1, f2 = (model_lib.train_flops_per_token(model_lib.ladder_config(size, v, **block), seq_len) for v in (1, 2))
  return 1 + round((record["flops_per_token"] - f1) / (f2 - f1))


AXIS_NAMES = {"non_embedding_params": "N", "pretrain_tokens": "D_p"}  # frames.BASE_AXES, as printed.


def base_factors(run: grid.Run, base: grid.Run, vocab_size: int) -> dict[str, float | None]:
  """A fine-tune's base factors (frames.BASE_AXES), from the configs: its non-embedding parameters, and the tokens
  of its pretraining (max_steps full batches; an imported base's as its entry says, or None)."""
  cfg = model_lib.ladder_config(run.config["size"], vocab_size, **run.config["block"])
  train = base.config.get("train")
  tokens = train["max_steps"] * train["batch_size"] * train["seq_len"] if train else base.config.get("pretrain_tokens")
  return {"non_embedding_params": model_lib.non_embedding_params(cfg), "pretrain_tokens": tokens}


def base_flops(base: grid.Run, vocab_size: int) -> float:
  """FLOPs of making a base: its pretraining's, or none for an imported one."""
  return train_flops(base, vocab_size) if base.kind == "pretrain" else 0.0


def train_flops(run: grid.Run, vocab_size: int) -> float:
  """FLOPs of a run's training at most: FLOPs per token times max_steps full batches."""
  train = run.config["train"]
  cfg = model_lib.ladder_config(run.config["size"], vocab_size, **run.config["block"])
  return float(
    model_lib.train_flops_per_token(cfg, train["seq_len"]) * train["max_steps"] * train["batch_size"] * train["seq_len"]
  )


# What to narrow: the prediction at a point, {"x": N, "d": D_f}, or a parameter of the law by name ("alpha").
Target = dict[str, float] | str


def target_fields(law: laws.Law, target: Target, default: dict[str, float]) -> tuple[np.ndarray, int | None]:
  """A problem's target points and parameter (`Problem.z_target`, `Problem.param`) for a target (None: `default`);
  ValueError names the parameters allowed."""
  if isinstance(target, str):
    if target not in law.names:
      allowed = ", ".join(law.names)
      raise ValueError(f"--target {target!r}; allowed: N,D_f or a parameter of the {law.name} law ({allowed})")
    return law.stack(x=[default["x"]], d=[default["d"]]), law.names.index(target)
  target = target or default
  return law.stack(x=[target["x"]], d=[target["d"]]), None


@dataclasses.dataclass(frozen=True)
class Proposal:
  """Fine-tunes to run next, in the order chosen, each with its cost and the target's spread after it."""

  cells: list[str]  # The task/method pairs proposed from, each with its own fit of the law.
  law: str
  axis: str  # The law's x: one of frames.BASE_AXES.
  target: Target  # The base's factor (x: see axis) and D_f (d) whose loss is predicted, or a parameter.
  runs: list[grid.Run]
  costs: list[float]  # FLOPs: the fine-tune's, and its base's pretraining where no earlier run pays for it.
  spread_before: float  # Standard deviation of the target's log loss (about its relative spread), or parameter;
  # with several cells, the root of the sum of their variances.
  spread_after: list[float]  # ... after each proposed run, with those before it.


def joint_law(name: str) -> laws.Law:
  """A law over x and d by name; ValueError names the laws allowed."""
  law = laws.get_law(name)
  if law.inputs != ("x", "d"):
    allowed = sorted(n for n, candidate in laws.LAWS.items() if candidate.inputs == ("x", "d"))
    raise ValueError(f"law {name!r} takes inputs {law.inputs}; allowed: a joint law over x and d, one of {allowed}")
  return law


def propose(
  workdir: str | epath.Path,
  budget: float,
  task: str | None = None,
  method: str | None = None,
  target: Target | None = None,
  law: str = "multiplicative",
  axis: str = "non_embedding_params",
) -> Proposal:
  """The grid's unfinished fine-tunes of a task and method (default: the study's first; "all": every one, each
  pair a cell with its own fit of the law) that most narrow a joint law's prediction over (X, D_f) at the target
  (default: the grid's largest X at its largest D_f), or one of its parameters, within `budget` FLOPs; with
  several cells, the sum of their targets' variances. X is `axis`: the bases' non-embedding parameters (over the
  bases of one D_p, as the study's fit) or their pretraining tokens (over the bases of one size)."""
  law_ = joint_law(law)
  if axis not in frames.BASE_AXES:
    raise ValueError(f"--x {axis!r}; allowed: one of {list(frames.BASE_AXES)}")
  workdir = results.workdir_path(workdir)
  runs = kinds.of_workdir(workdir)
  if runs is None:
    raise ValueError(f"--workdir {workdir}: no study.json; allowed: the workdir of a study that launch.local ran")
  by_id = {r.id: r for r in runs}
  done = {r.id: rec for r in runs if (rec := results.read_result(workdir / "runs" / r.id)) is not None}
  tunes = [r for r in runs if r.kind == "finetune"]
  if not tunes:
    raise ValueError(f"the study in {workdir} has no fine-tunes to propose")
  cells = select_cells(tunes, task, method)
  finished = {r.id for r in tunes if r.id in done and np.isfinite(done[r.id]["metrics"]["test_loss"])}
  for label, cell in cells.items():
    if not finished & {r.id for r in cell}:
      raise ValueError(f"no finished fine-tunes of {label} in {workdir}: run some of the grid first")
  first = next(r for r in tunes if r.id in finished)
  vocab = _vocab_size(first, done[first.id])
  factors = {r.id: base_factors(r, by_id[r.deps[0]], vocab) for cell in cells.values() for r in cell}
  cells = {label: law_slice(cell, factors, finished, axis) for label, cell in cells.items()}
  x = lambda r: factors[r.id][axis]  # noqa: E731
  everything = [r for cell in cells.values() for r in cell]
  largest = {"x": max(map(x, everything)), "d": max(r.config["d_f"] for r in everything)}
  z_target, param = target_fields(law_, target, largest)
  rows, parts = [], []
  for label, cell in cells.items():
    ran, open_ = [r for r in cell if r.id in finished], [r for r in cell if r.id not in done]
    losses = [done[r.id]["metrics"]["test_loss"] for r in ran]
    problem = Problem(
      label,
      law_.stack(x=[x(r) for r in ran + open_], d=[r.config["d_f"] for r in ran + open_]),
      np.zeros(len(ran + open_)),
      np.array(losses + [np.mean(losses)] * len(open_)),  # Unknown losses, weighted 0 in the fit.
      z_target,
      np.array([np.nan]),
      param,
    )
    parts.append(fitted(law_, problem, np.arange(len(ran + open_)) < len(ran)))
    rows += ran + open_

  def surcharge(chosen: np.ndarray) -> np.ndarray:
    """Each run's base's pretraining, unless it finished or a run chosen already pays for it."""
    paid = set(done) | {r.deps[0] for r, c in zip(rows, chosen) if c}
    return np.array([0.0 if r.deps[0] in paid else base_flops(by_id[r.deps[0]], vocab) for r in rows])

  cost = np.array([0.0 if r.id in finished else train_flops(r, vocab) for r in rows])
  bought = np.array([r.id in finished for r in rows])
  picked, costs, before, after = choose(combine(parts), cost, bought, budget, surcharge)
  target = target if isinstance(target, str) else target or largest
  return Proposal(list(cells), law, axis, target, [rows[i] for i in picked], costs, before, after)


def select_cells(tunes: list[grid.Run], task: str | None, method: str | None) -> dict[str, list[grid.Run]]:
  """The fine-tunes of a task and method (default: the first's; "all": every one) by cell, "task/method"."""
  cell_of = lambda r: (r.config["task"], methods.label(r.config["method"]))  # noqa: E731
  task, method = task or cell_of(tunes[0])[0], method or cell_of(tunes[0])[1]
  cells: dict[str, list[grid.Run]] = {}
  for r in tunes:
    if task in ("all", cell_of(r)[0]) and method in ("all", cell_of(r)[1]):
      cells.setdefault("/".join(cell_of(r)), []).append(r)
  if not cells:
    pairs = sorted({cell_of(r) for r in tunes})
    raise ValueError(f"no fine-tunes of task {task!r} with method {method!r}; allowed: {pairs}, or all")
  return cells


def law_slice(cell: list[grid.Run], factors: dict[str, dict], finished: set[str], axis: str) -> list[grid.Run]:
  """The runs of a cell that a law over `axis` takes: those whose bases share the other factor's value that the
  study's fit takes from the finished runs (`frames.law_rows`), where the axis is known."""
  other = next(a for a in frames.BASE_AXES if a != axis)
  value = frames.law_rows(pd.DataFrame([factors[r.id] for r in cell if r.id in finished]), axis)[other].iloc[0]
  same = lambda v: (pd.isna(v) and pd.isna(value)) or v == value  # noqa: E731
  return [r for r in cell if same(factors[r.id][other]) and factors[r.id][axis] is not None]


def fitted(law: laws.Law, problem: Problem, bought: np.ndarray) -> Linear:
  """The law fitted to the runs bought (their losses; the others' are ignored), linearised with its residual noise."""
  return linearise(law, fit_theta(law, problem, bought, law.starts()), problem, bought)


def choose(
  linear: Linear,
  cost: np.ndarray,
  bought: np.ndarray,
  budget: float,
  surcharge: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[list[int], list[float], float, list[float]]:
  """The runs to buy next within `budget`, by plan: their indices and costs (each with `surcharge(chosen)`, a cost
  that the runs chosen may already have paid, such as a base's pretraining), and the target's spread before and
  after each."""
  chosen, left, picked, costs, after = bought.copy(), budget, [], [], []
  while True:
    total = cost + (surcharge(chosen) if surcharge else 0.0)
    first, _ = plan(linear, total, chosen, left)
    if first < 0:
      break
    chosen[first], left = True, left - total[first]
    picked.append(first)
    costs.append(float(total[first]))
    after.append(float(np.sqrt(linear.variance(chosen))))
  return picked, costs, float(np.sqrt(linear.variance(bought))), after


def propose_rows(
  frame: pd.DataFrame,
  x: str,
  d: str,
  y: str,
  budget: float,
  cost: str | None = None,
  law: str = "multiplicative",
  target: Target | None = None,
) -> pd.DataFrame:
  """The rows of a table without a loss (y) to run next within `budget`, by plan, from the law fitted to the rows
  with one (columns x and d: the law's inputs; cost: a column of costs, default 6 x d FLOPs); target: default the
  largest x at the largest d, or a parameter of the law. Returns the rows chosen, in order, with `cost` and
  `spread after` (attrs: `spread before`, `target`)."""
  law_ = joint_law(law)
  missing = [c for c in (x, d, y, cost) if c and c not in frame.columns]
  if missing:
    raise ValueError(f"column {missing[0]!r} is not in the table; columns: {list(frame.columns)}")
  known = frame[y].notna().to_numpy()
  if not known.any() or known.all():
    raise ValueError(f"column {y!r} must have losses (the runs done) and blanks (the runs to choose among)")
  xs, ds = frame[x].to_numpy(float), frame[d].to_numpy(float)
  y_values = frame[y].to_numpy(float)
  largest = {"x": xs.max(), "d": ds.max()}
  z_target, param = target_fields(law_, target, largest)
  problem = Problem(
    "table",
    law_.stack(x=xs, d=ds),
    np.where(known, 0.0, frame[cost].to_numpy(float) if cost else 6 * xs * ds),
    np.where(known, y_values, np.nanmean(y_values)),  # Unknown losses, weighted 0 in the fit.
    z_target,
    np.array([np.nan]),
    param,
  )
  picked, costs, before, after = choose(fitted(law_, problem, known), problem.cost, known, budget)
  out = frame.iloc[picked].assign(cost=costs, **{"spread after": after})
  out.attrs["spread before"] = before
  out.attrs["target"] = target if isinstance(target, str) else target or largest
  return out


def write_override(workdir: str | epath.Path, proposal: Proposal) -> epath.Path:
  """A flag file that launchers take (`--flagfile`): the proposed runs as the study's `only`."""
  path = results.workdir_path(workdir) / "design" / "next.flags"
  labels = tuple(grid.run_label(r.id) for r in proposal.runs)
  results.write_text(path, f"--config.only={labels!r}\n")
  return path


def summary(rows: pd.DataFrame) -> pd.DataFrame:
  """Median held-out relative error of each strategy, and of fitting every run, with its ratio to that."""
  med = rows.groupby("strategy")["error"].median()
  all_error = rows.groupby("problem")["all"].first().median()
  out = pd.DataFrame(
    {"median error": med, "x all runs": med / all_error, "runs": rows.groupby("strategy")["runs"].median()}
  )
  out.loc["all runs"] = [all_error, 1.0, np.nan]
  return out.sort_values("median error")


def _read_csv(path: str) -> pd.DataFrame:
  try:
    return pd.read_csv(path)
  except FileNotFoundError:
    raise ValueError(f"--simulate {path}: no such file; allowed: a CSV of analysis.lin or analysis.colpret") from None


def markdown_table(rows: pd.DataFrame) -> str:
  """One row per (data, fraction) of `simulate` rows: the median error of fitting every run, and of each strategy
  with its ratio to that, the best strategy in bold."""
  strategies = list(dict.fromkeys(rows["strategy"]))
  lines = [
    "| data | fraction | all runs | " + " | ".join(strategies) + " |",
    "|---|---|---|" + "---|" * len(strategies),
  ]
  for (data, fraction), part in rows.groupby(["data", "fraction"], sort=False):
    table = summary(part)
    best = table.drop("all runs")["median error"].min()
    cells = []
    for strategy in strategies:
      error, ratio = table.loc[strategy, ["median error", "x all runs"]]
      cells.append((f"**{100 * error:.3g}%**" if error == best else f"{100 * error:.3g}%") + f" ({ratio:.2g}x)")
    all_runs = 100 * table.loc["all runs", "median error"]
    lines.append(f"| {data} | {fraction:.0%} | {all_runs:.3g}% | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _target(text: str) -> Target:
  if "," not in text and text.isidentifier():
    return text  # A parameter's name, checked against the law's.
  try:
    x, d = (float(v) for v in text.split(","))
  except ValueError:
    allowed = "N,D_f (two numbers, as 1e5,640) or a parameter of the law (as alpha)"
    raise argparse.ArgumentTypeError(f"--target {text!r}; allowed: {allowed}") from None
  return {"x": x, "d": d}


def target_text(law: laws.Law, target: Target, x: str = "N", d: str = "D_f") -> str:
  """What a spread is of: the prediction at a point (in log loss; its inputs named x and d), or a parameter (log A
  for a parameter fitted as a log)."""
  if isinstance(target, str):
    param = law.params[law.names.index(target)]
    return f"log {target}" if param in law.exp_params else target
  return f"the prediction at {x}={target['x']:.4g}, {d}={target['d']:.4g} (in log loss)"


def print_proposal(proposal: Proposal, budget: float) -> None:
  """The proposal as a table: each run, its cost, and the target's spread once it and those above it are in."""
  what = target_text(laws.get_law(proposal.law), proposal.target, AXIS_NAMES[proposal.axis])
  print(f"{', '.join(proposal.cells)}, the {proposal.law} law: the spread of {what} is {proposal.spread_before:.3g}")
  rows = [
    {"run": grid.run_label(r.id), "FLOPs": c, "spread after": a}
    for r, c, a in zip(proposal.runs, proposal.costs, proposal.spread_after)
  ]
  if rows:
    print(
      pd.DataFrame(rows).to_string(index=False, formatters={"FLOPs": "{:.3g}".format, "spread after": "{:.3g}".format})
    )
  print(f"{len(rows)} runs, {sum(proposal.costs):.3g} of {budget:.3g} FLOPs")


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  mode = parser.add_mutually_exclusive_group(required=True)
  mode.add_argument("--workdir", help="A study's workdir: propose its next fine-tunes.")
  mode.add_argument("--csv", help="A table of runs: those without a loss (--y) are the ones to choose among.")
  mode.add_argument(
    "--simulate", nargs="+", metavar="CSV", help="Replay published runs: CSVs of analysis.lin or analysis.colpret."
  )
  parser.add_argument(
    "--x",
    help="The law's x: the table's column of the model-side factor (--csv), or the study's (--workdir: "
    "non_embedding_params, the default, or pretrain_tokens).",
  )
  parser.add_argument("--d", help="... of the data (--csv).")
  parser.add_argument("--y", help="... of the loss, blank for runs not yet run (--csv).")
  parser.add_argument("--cost", help="... of each run's cost (--csv; default 6 x d FLOPs).")
  parser.add_argument("--budget", type=float, help="FLOPs (or --cost units) to spend on the runs proposed.")
  parser.add_argument("--task", help="The fine-tunes' task (default: the study's first; all: every one).")
  parser.add_argument("--method", help="Their method label (default: the study's first; all: every one).")
  parser.add_argument(
    "--target",
    type=_target,
    help="N,D_f to predict (default: the grid's largest of each), or a parameter of the law to narrow (alpha).",
  )
  parser.add_argument("--config", default="CONFIG.py", help="The study's config file, for the command printed.")
  parser.add_argument(
    "--law",
    help="The law fitted (default: multiplicative; for --simulate, rectified on Lin et al.'s and overtrained on "
    "ColPret's).",
  )
  parser.add_argument(
    "--fraction", type=float, nargs="+", default=[0.2], help="Fractions of every run's cost to spend (--simulate)."
  )
  parser.add_argument("--repeats", type=int, default=10, help="Sets of starting runs (--simulate).")
  parser.add_argument("--out", help="Write every replay's row here (--simulate, CSV).")
  args = parser.parse_args(argv)
  if (args.workdir or args.csv) and (not args.budget or args.budget <= 0):
    parser.error(f"--budget={args.budget}; allowed: a positive number of FLOPs (or of --cost's units)")
  joint = args.law or "multiplicative"  # The law of --csv and --workdir.
  if args.csv:
    if not (args.x and args.d and args.y):
      parser.error("--csv needs --x, --d and --y: the columns of the factor, the data and the loss")
    try:
      chosen = propose_rows(pd.read_csv(args.csv), args.x, args.d, args.y, args.budget, args.cost, joint, args.target)
    except ValueError as e:
      sys.exit(str(e))
    what = target_text(laws.get_law(joint), chosen.attrs["target"], args.x, args.d)
    print(f"the spread of {what} now: {chosen.attrs['spread before']:.3g}")
    print(chosen.to_string(float_format=lambda v: f"{v:.4g}") if len(chosen) else "no run fits the budget")
    return
  if args.workdir:
    try:
      axis = args.x or "non_embedding_params"
      proposal = propose(args.workdir, args.budget, args.task, args.method, args.target, joint, axis)
    except ValueError as e:
      sys.exit(str(e))
    print_proposal(proposal, args.budget)
    if proposal.runs:
      path = write_override(args.workdir, proposal)
      print(f"run them: python -m launch.local --config {args.config} --workdir {args.workdir} --flagfile {path}")
    return
  bad = [f for f in args.fraction if not 0 < f <= 1]
  if bad or args.repeats < 1:
    parser.error(f"--fraction={bad[0]}; allowed: in (0, 1]" if bad else f"--repeats={args.repeats}; allowed: 1 or more")
  try:
    settings = [source_problems(_read_csv(path), args.law) for path in args.simulate]
  except ValueError as e:
    sys.exit(str(e))
  rows = []
  for (label, law, problems), fraction in itertools.product(settings, args.fraction):

    def progress(line: str, label: str = label, fraction: float = fraction) -> None:
      print(f"{label}, {fraction:.0%}: {line}", file=sys.stderr, flush=True)

    replays = simulate(law, problems, fraction, args.repeats, progress=progress)
    rows.append(replays.assign(data=label, fraction=fraction))
  rows = pd.concat(rows, ignore_index=True)
  if args.out:
    rows.to_csv(args.out, index=False)
  print(markdown_table(rows))


if __name__ == "__main__":
  main()
