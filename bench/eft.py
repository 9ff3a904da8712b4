"""The EFT decoding benchmark (`python -m bench eft`): on the trained models of a finished study (by
default its largest base as N1 with the fine-tune of its smallest size at its largest D_f as N2),
generate biographies of held-out people with plain EFT decoding (three models, one cached step each
per token) and with speculative EFT decoding (the small fine-tune drafts k tokens, the three models
check them in one pass each); greedy, so both must produce the same tokens. Rows give tokens per
second, the acceptance rate, large-model passes per generated token and the speed-up, at batch 1
and 32."""

from __future__ import annotations

import time

import jax
import numpy as np
from etils import epath

from scaling import context as context_lib
from scaling import decode, eft, results
from scaling import mesh as mesh_lib
from scaling import run as run_lib


def _timed(fn, repeats: int = 3) -> tuple[float, object]:
  """Best wall time of `fn()` over `repeats` calls after one warm-up call, and its last output."""
  out = jax.block_until_ready(fn())
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    best = min(best, time.perf_counter() - t0)
  return best, out


def measure(
  workdir: str, n1: str | None, n2: str | None, d_f: int | None, k: int, tokens: int, batches: tuple[int, ...] = (1, 32)
) -> list[tuple[str, str]]:
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
    bos, world = ctx.tok.bos, ctx.sources.world
    people = world.people(2)
    rows = [
      ("N1 base / N2 fine-tune", f"{n1} / {n2} (qa, D_f={d_f}), beta 1, k={k}, greedy"),
      ("generated per prompt", f"{tokens} tokens of a held-out person's biography"),
    ]
    for batch in batches:
      names = [world.names[people[i % len(people)]] for i in range(batch)]
      prompts = np.asarray([[bos, *ctx.tok.encode(name)] for name in names], np.int32)
      lens = np.full(batch, prompts.shape[1], np.int32)
      key = jax.random.key(0)
      plain_s, plain = _timed(lambda: decode.generate(mixture, prompts, lens, key, num_new=tokens))
      spec_s, (spec, stats) = _timed(
        lambda: decode.speculative_generate(
          mixture, prompts, lens, key, num_new=tokens, k=k, draft=eft.TERMS.index("finetuned_n2")
        )
      )
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
        (
          f"batch {batch}: large-model passes per token",
          f"plain 1.00, speculative {passes:.2f} ({1 / passes:.2f}x fewer)",
        ),
        (
          f"batch {batch}: one model alone, large / small",
          f"{large_s * 1e3:.0f} ms / {small_s * 1e3:.0f} ms (cost ratio {small_s / large_s:.2f})",
        ),
      ]
  return rows
