"""Benchmarks that compare against a baseline run in the same process and print a table.

    python -m scaling.bench laws [--points 40] [--bootstrap 1000]
    python -m scaling.bench eft [--workdir runs/smoke] [--n1 SIZE] [--n2 SIZE] [--k 4] [--tokens 48]

`laws`: fit the additive law from Hoffmann's full starting grid (4,500 starts) twice, vectorised
(one JAX program) and the obvious way (a Python loop of scipy L-BFGS-B with exact gradients),
on the same data; then time bootstrap replicates of the same fit.

`eft`: on the trained models of a finished study (by default its largest base as N1 with the
fine-tune of its smallest size at its largest D_f as N2), generate biographies of held-out people
with plain EFT decoding (three models, one cached step each per token) and with speculative EFT
decoding (the small fine-tune drafts k tokens, the three models check them in one pass each);
greedy, so both must produce the same tokens. Prints tokens per second, the acceptance rate,
large-model passes per generated token and the speed-up, at batch 1 and 32.
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import numpy as np
import scipy.optimize
from etils import epath

from scaling import context as context_lib
from scaling import decode, eft, laws, results
from scaling import mesh as mesh_lib
from scaling import run as run_lib
from scaling.data import world as world_lib


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
  grad = np.asarray([(dr * p[0]).sum(), -(dr * p[0] * log_x).sum(), (dr * p[1]).sum(),
                     -(dr * p[1] * log_d).sum(), (dr * p[2]).sum()])
  return huber.sum(), grad


def scipy_loop(starts, log_x, log_d, log_y, delta):
  """The obvious way: one scipy L-BFGS-B minimisation per start; returns the best (theta, value)."""
  best = (None, np.inf)
  for x0 in starts:
    res = scipy.optimize.minimize(_additive_objective_and_grad, x0, args=(log_x, log_d, log_y, delta),
                                  jac=True, method="L-BFGS-B")
    if res.fun < best[1]:
      best = (res.x, float(res.fun))
  return best


def bench_laws(num_points: int, replicates: int, delta: float = 1e-3) -> list[tuple[str, str]]:
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


def _timed(fn, repeats: int = 3) -> tuple[float, object]:
  """Best wall time of `fn()` over `repeats` calls after one warm-up call, and its last output."""
  out = jax.block_until_ready(fn())
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    best = min(best, time.perf_counter() - t0)
  return best, out


def bench_eft(workdir: str, n1: str | None, n2: str | None, d_f: int | None, k: int, tokens: int,
              batches: tuple[int, ...] = (1, 32)) -> list[tuple[str, str]]:
  """Rows of the EFT decoding benchmark table."""
  table = results.load_table(workdir)
  if table.empty:
    raise SystemExit(f"no finished runs in {workdir}: run the study first (make study)")
  pre = table[table["kind"] == "pretrain"].sort_values("non_embedding_params")
  ft = table[table["kind"] == "finetune"]
  n1 = n1 or pre["size"].iloc[-1]
  n2 = n2 or pre["size"].iloc[0]
  mine = ft[ft["size"] == n2]
  d_f = d_f or int(mine["d_f"].max())
  ft_n2 = mine[mine["d_f"] == d_f].sort_values("seed").iloc[0]
  base = {s: pre[pre["size"] == s]["id"].iloc[0] for s in (n1, n2)}
  run, root = run_lib.load_spec(epath.Path(workdir) / "runs" / base[n1] / "spec.json")
  ctx = context_lib.context(run, root)
  with mesh_lib.activate(ctx.mesh, ctx.rules):
    models = [context_lib.load_run_model(ctx, i) for i in (base[n1], ft_n2["id"], base[n2])]
    mixture = decode.Mixture.of(models, eft.weights(1.0))
    large, small = (decode.Mixture.of([m], [1.0]) for m in models[:2])
    bos = ctx.tok.token_to_id(world_lib.BOS)
    people = ctx.world.people(2)
    rows = [("N1 base / N2 fine-tune", f"{n1} / {n2} (qa, D_f={d_f}), beta 1, k={k}, greedy"),
            ("generated per prompt", f"{tokens} tokens of a held-out person's biography")]
    for batch in batches:
      names = [ctx.world.names[people[i % len(people)]] for i in range(batch)]
      prompts = np.asarray([[bos, *ctx.tok.encode(name).ids] for name in names], np.int32)
      lens = np.full(batch, prompts.shape[1], np.int32)
      key = jax.random.key(0)
      plain_s, plain = _timed(lambda: decode.generate(mixture, prompts, lens, key, num_new=tokens))
      spec_s, (spec, stats) = _timed(lambda: decode.speculative_generate(
          mixture, prompts, lens, key, num_new=tokens, k=k, draft=eft.TERMS.index("finetuned_n2")))
      large_s, _ = _timed(lambda: decode.generate(large, prompts, lens, key, num_new=tokens))
      small_s, _ = _timed(lambda: decode.generate(small, prompts, lens, key, num_new=tokens))
      made = batch * tokens
      passes = int(stats.target_passes) / tokens
      rows += [
          (f"batch {batch}: plain EFT", f"{made / plain_s:,.0f} tokens/s ({plain_s * 1e3:.0f} ms)"),
          (f"batch {batch}: speculative EFT", f"{made / spec_s:,.0f} tokens/s ({spec_s * 1e3:.0f} ms)"),
          (f"batch {batch}: speed-up", f"{plain_s / spec_s:.2f}x"),
          (f"batch {batch}: same tokens", str(bool(np.array_equal(np.asarray(plain), np.asarray(spec))))),
          (f"batch {batch}: acceptance rate", f"{int(stats.accepted) / max(int(stats.drafted), 1):.3f}"),
          (f"batch {batch}: large-model passes per token", f"plain 1.00, speculative {passes:.2f} "
                                                           f"({1 / passes:.2f}x fewer)"),
          (f"batch {batch}: one model alone, large / small", f"{large_s * 1e3:.0f} ms / {small_s * 1e3:.0f} ms "
                                                            f"(cost ratio {small_s / large_s:.2f})"),
      ]
  return rows


def print_table(title: str, rows: list[tuple[str, str]]) -> None:
  width = max(len(k) for k, _ in rows)
  print(title)
  for k, v in rows:
    print(f"  {k.ljust(width)}  {v}")


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("which", choices=["laws", "eft"])
  parser.add_argument("--points", type=int, default=40, help="laws: data points.")
  parser.add_argument("--bootstrap", type=int, default=1000, help="laws: bootstrap replicates.")
  parser.add_argument("--workdir", default="runs/smoke", help="eft: a finished study's workdir.")
  parser.add_argument("--n1", help="eft: the base size (default: the study's largest).")
  parser.add_argument("--n2", help="eft: the fine-tuned size (default: the study's smallest).")
  parser.add_argument("--d-f", type=int, help="eft: the fine-tune's D_f (default: the largest).")
  parser.add_argument("--k", type=int, default=4, help="eft: tokens drafted per target pass.")
  parser.add_argument("--tokens", type=int, default=48, help="eft: tokens generated per prompt.")
  args = parser.parse_args(argv)
  run_lib.setup_runtime()
  if args.which == "laws":
    print_table(f"laws: additive law, {args.points} points, Hoffmann's grid", bench_laws(args.points, args.bootstrap))
  else:
    print_table(f"eft: plain against speculative EFT decoding ({jax.devices()[0].platform})",
                bench_eft(args.workdir, args.n1, args.n2, args.d_f, args.k, args.tokens))


if __name__ == "__main__":
  main(sys.argv[1:])
