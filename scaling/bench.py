"""Benchmarks that compare against a baseline run in the same process and print a table.

    python -m scaling.bench train [--size d768l12,d2048l24] [--seq 2048] [--batch 8] [--dtype bfloat16]
                                  [--remat none|dots|full] [--attention auto|xla|cudnn] [--vocab 32768]
                                  [--loss-chunk 256]
    python -m scaling.bench methods [--size d128l4] [--methods full,lora,prompt,reft,svf] [--seq 256] [--batch 8]
    python -m scaling.bench laws [--points 40] [--bootstrap 1000]
    python -m scaling.bench eft [--workdir runs/smoke] [--n1 SIZE] [--n2 SIZE] [--k 4] [--tokens 48]
    python -m scaling.bench grid [--workdir runs/smoke] [--lanes 8] [--sizes d32l2,d64l2]

`train`: for each ladder size, our training step (`scaling.train.jit_step` over the Flax model,
sharded by `scaling.mesh` over every local device, data-parallel) and a plain-JAX reference step
of the same model math (pure functions of the same parameter dict: RMSNorm, RoPE attention,
SwiGLU, tied embeddings; the same AdamW, compute dtype, attention kernel and remat policy) on the
same random batch from the same initial parameters. Each is compiled first, then runs `--warmup`
untimed steps and `--steps` timed ones (each until its results are ready); a row gives the median
step time, tokens per second, model FLOP/s (`model.train_flops_per_token`, remat's recomputation
not counted) and MFU against the chip's dense peak for the compute dtype (none on a CPU), the
first step's loss (equal for both implementations up to rounding), the compiled step's memory
(arguments, outputs and temporaries) and the device's peak memory in use so far in this process,
where the device reports it (so a row bounds its implementation's peak from above), and ours'
step time over the reference's. Needs only jax, flax, optax, orbax, etils, numpy, tqdm and absl.

`methods`: the train step of each fine-tuning method (default options) on the same base, against
full tuning: trainable parameters P, median step time, tokens per second, and the compiled step's
memory (arguments, outputs, temporaries), each also as a ratio to full tuning's.

`laws`: fit the additive law from Hoffmann's full starting grid (4,500 starts) twice, vectorised
(one JAX program) and the obvious way (a Python loop of scipy L-BFGS-B with exact gradients),
on the same data; then time bootstrap replicates of the same fit.

`eft`: on the trained models of a finished study (by default its largest base as N1 with the
fine-tune of its smallest size at its largest D_f as N2), generate biographies of held-out people
with plain EFT decoding (three models, one cached step each per token) and with speculative EFT
decoding (the small fine-tune drafts k tokens, the three models check them in one pass each);
greedy, so both must produce the same tokens. Prints tokens per second, the acceptance rate,
large-model passes per generated token and the speed-up, at batch 1 and 32.

`grid`: the fine-tunes of a finished study (bases, data and plan reused; every run trained again
in a scratch folder), one by one and then packed as lanes of one program (`scaling.pack`), each
after an untimed pass that compiles its programs: runs per hour of both, the speed-up, and the
largest relative difference of any metric between a run trained alone and packed.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import statistics
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.optimize  # A dependency of jax: installed wherever jax is.
from etils import epath
from flax import nnx

from scaling import decode, eft, laws, timing, train
from scaling import mesh as mesh_lib
from scaling import model as model_lib

# Dense peak TFLOP/s of one chip: (a substring of its jax device_kind, bfloat16, float32 at JAX's
# default precision, which is TF32 on NVIDIA GPUs and one bfloat16 pass on TPUs; plain float32
# runs at 67 on an H100). The first match wins.
PEAK_TFLOPS: tuple[tuple[str, float, float], ...] = (
  ("H100 PCIe", 756.0, 378.0),
  ("H100 NVL", 835.0, 417.5),
  ("H100", 989.0, 494.5),
  ("H200", 989.0, 494.5),
  ("TPU v4", 275.0, 275.0),
  ("TPU v5 lite", 197.0, 197.0),  # v5e.
  ("TPU v5", 459.0, 459.0),  # v5p.
  ("TPU v6 lite", 918.0, 918.0),  # v6e.
)


def peak_flops(device: jax.Device, compute_dtype: str) -> float | None:
  """The chip's dense peak FLOP/s for matmuls in `compute_dtype`; None if it is not in the table."""
  for kind, bf16, f32 in PEAK_TFLOPS:
    if kind in device.device_kind:
      return 1e12 * (bf16 if compute_dtype == "bfloat16" else f32)
  return None


def _ref_norm(x_BxLxD: jax.Array, scale_D: jax.Array, eps: float) -> jax.Array:
  """RMSNorm in float32, returned in the input's dtype."""
  x = x_BxLxD.astype(jnp.float32)
  return (x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + eps) * scale_D).astype(x_BxLxD.dtype)


def _ref_rope(x_BxLxNxH: jax.Array, theta: float) -> jax.Array:
  """RoPE on whole heads: (first half, second half) pairs rotated as complex numbers."""
  seq, h = x_BxLxNxH.shape[1], x_BxLxNxH.shape[-1]
  angle_LxR = jnp.arange(seq, dtype=jnp.float32)[:, None] * theta ** (-jnp.arange(0, h, 2, dtype=jnp.float32) / h)
  x = x_BxLxNxH.astype(jnp.float32)
  z_BxLxNxR = jax.lax.complex(x[..., : h // 2], x[..., h // 2 :]) * jnp.exp(1j * angle_LxR)[:, None, :]
  return jnp.concatenate([z_BxLxNxR.real, z_BxLxNxR.imag], -1).astype(x_BxLxNxH.dtype)


def _ref_block(cfg: model_lib.ModelConfig, attention: str, p: dict, x_BxLxD: jax.Array) -> jax.Array:
  """One pre-norm layer: x + attention(norm(x)), then + SwiGLU(norm(x))."""
  dt, a, m = x_BxLxD.dtype, p["attn"], p["mlp"]
  h_BxLxD = _ref_norm(x_BxLxD, p["norm_attn"]["scale"], cfg.norm_eps)
  q, k, v = (jnp.einsum("bld,dnh->blnh", h_BxLxD, a[w].astype(dt)) for w in ("wq", "wk", "wv"))
  o_BxLxNxH = jax.nn.dot_product_attention(
    _ref_rope(q, cfg.rope_theta), _ref_rope(k, cfg.rope_theta), v, is_causal=True, implementation=attention
  )
  x_BxLxD = x_BxLxD + jnp.einsum("blnh,nhd->bld", o_BxLxNxH, a["wo"].astype(dt))
  h_BxLxD = _ref_norm(x_BxLxD, p["norm_mlp"]["scale"], cfg.norm_eps)
  h_BxLxF = jax.nn.silu(h_BxLxD @ m["w_gate"].astype(dt)) * (h_BxLxD @ m["w_up"].astype(dt))
  return x_BxLxD + h_BxLxF @ m["w_down"].astype(dt)


def reference_loss(cfg: model_lib.ModelConfig, params: dict, batch: dict) -> jax.Array:
  """Weighted mean next-token loss of the ladder's default architecture, written as plain functions
  of our parameter dict: the reference that the bench holds our model against."""
  scan = model_lib.scans_layers(cfg)
  block = functools.partial(_ref_block, cfg, model_lib.attention_implementation(cfg))
  if cfg.remat != "none":
    block = jax.checkpoint(block, policy=model_lib.REMAT_POLICIES[cfg.remat], prevent_cse=not scan)
  x_BxLxD = params["embed"][batch["inputs"]].astype(model_lib.compute_dtype_of(cfg))
  if scan:
    x_BxLxD = jax.lax.scan(lambda x, p: (block(p, x), None), x_BxLxD, params["blocks"])[0]
  else:
    for i in range(cfg.n_layers):
      x_BxLxD = block(params["blocks"][i], x_BxLxD)
  x_BxLxD = _ref_norm(x_BxLxD, params["norm_out"]["scale"], cfg.norm_eps)
  logits_BxLxV = jnp.einsum(
    "bld,vd->blv", x_BxLxD, params["embed"].astype(x_BxLxD.dtype), preferred_element_type=jnp.float32
  )
  losses_BxL = optax.softmax_cross_entropy_with_integer_labels(logits_BxLxV, batch["targets"])
  return (losses_BxL * batch["weights"]).sum() / batch["weights"].sum()


def reference_params(cfg: model_lib.ModelConfig, params: dict) -> dict:
  """Our parameters (a pure dict) as the reference keeps them: where layers are scanned, the blocks'
  weights stacked on a leading layer axis once, as a plain JAX model that scans would hold them."""
  if not model_lib.scans_layers(cfg):
    return params
  blocks = [params["blocks"][i] for i in range(cfg.n_layers)]
  return {**params, "blocks": jax.tree.map(lambda *layers: jnp.stack(layers), *blocks)}


def reference_step(
  cfg: model_lib.ModelConfig, tx: optax.GradientTransformation, state: dict, batch: dict
) -> tuple[dict, dict]:
  """One optimiser step of the reference; its state is {"params", "opt"}."""
  loss, grads = jax.value_and_grad(reference_loss, argnums=1)(cfg, state["params"], batch)
  updates, opt = tx.update(grads, state["opt"], state["params"])
  return {"params": optax.apply_updates(state["params"], updates), "opt": opt}, {"loss": loss}


def _compiled_step(
  impl: str,
  cfg: model_lib.ModelConfig,
  tx: optax.GradientTransformation,
  mesh: jax.sharding.Mesh,
  batch: dict,
  loss_chunk: int = 0,
) -> tuple[Callable, dict, jax.stages.Compiled]:
  """(step(state) -> (state, metrics), the initial state, the compiled program) of one implementation."""
  rules = mesh_lib.DEFAULT_RULES
  with mesh_lib.activate(mesh, rules):
    graphdef, params = mesh_lib.create_sharded(lambda: model_lib.Transformer(cfg, nnx.Rngs(0)), mesh, rules)
    if impl == "reference":
      params = jax.jit(functools.partial(reference_params, cfg))(params)
      state = {"params": params, "opt": jax.jit(tx.init)(params)}
      compiled = jax.jit(functools.partial(reference_step, cfg, tx), donate_argnums=0).lower(state, batch).compile()
      return lambda s: compiled(s, batch), state, compiled
    state_sh = train.state_shardings(tx, params, jax.tree.map(lambda x: x.sharding, params), mesh)
    state = {
      "step": jnp.zeros((), jnp.int32),
      "params": params,
      "opt": jax.jit(tx.init, out_shardings=state_sh["opt"])(params),
      "tokens": jnp.zeros((), jnp.float32),
    }
    step = train.jit_step(graphdef, tx, state_sh, {}, mesh_lib.batch_sharding(mesh, rules), loss_chunk)
    compiled = step.lower(state, {}, batch).compile()
    return lambda s: compiled(s, {}, batch), state, compiled


def _peak_bytes() -> int | None:
  """The largest peak memory in use of the local devices so far; None where they do not report it."""
  stats = [d.memory_stats() or {} for d in jax.local_devices()]
  return max(s["peak_bytes_in_use"] for s in stats) if all("peak_bytes_in_use" in s for s in stats) else None


def random_batch(cfg: model_lib.ModelConfig, batch: int, seq: int, sharding) -> dict:
  """A batch of random tokens, every one scored, with the first half of each row as its prompt."""
  tokens_BxL = jax.random.randint(jax.random.key(0), (batch, seq + 1), 0, cfg.vocab_size)
  return jax.device_put(
    {
      "inputs": tokens_BxL[:, :-1],
      "targets": tokens_BxL[:, 1:],
      "weights": jnp.ones((batch, seq)),
      "prompt_len": jnp.full((batch,), seq // 2, jnp.int32),
    },
    sharding,
  )


def bench_train(
  size: str,
  cfg: model_lib.ModelConfig,
  *,
  seq: int,
  batch: int,
  steps: int,
  warmup: int,
  loss_chunk: int = 0,
  hlo_dir: str | None = None,
) -> list[dict]:
  """Rows of the training-step benchmark for one size: ours (its loss in chunks of `loss_chunk`
  positions, if not 0), then the reference (never chunked); with `hlo_dir`, each compiled step's
  optimised HLO is written there as `{size}-{impl}.hlo.txt`, to be compared op by op."""
  tx = train.make_optimizer(train.TrainConfig(batch_size=batch, seq_len=seq, warmup_steps=0, schedule="constant"))
  mesh = mesh_lib.make_mesh({"data": -1})
  data = random_batch(cfg, batch, seq, mesh_lib.batch_sharding(mesh, mesh_lib.DEFAULT_RULES))
  devices = jax.devices()  # The mesh's: MFU is the global FLOP/s over every device's peak.
  peak = peak_flops(devices[0], model_lib.compute_dtype_of(cfg))
  flops_per_token = model_lib.train_flops_per_token(cfg, seq)
  rows = []
  for impl in ("ours", "reference"):
    print(f"{size} {impl}: compiling", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    step, state, compiled = _compiled_step(impl, cfg, tx, mesh, data, loss_chunk if impl == "ours" else 0)
    compile_s = time.perf_counter() - t0
    stats = compiled.memory_analysis()
    if hlo_dir:
      with open(os.path.join(hlo_dir, f"{size}-{impl}.hlo.txt"), "w") as f:
        f.write(compiled.as_text())
    times, losses = [], []
    for _ in range(warmup + steps):
      t0 = time.perf_counter()
      state, metrics = jax.block_until_ready(step(state))
      times.append(time.perf_counter() - t0)
      losses.append(float(metrics["loss"]))
    del state  # Frees this implementation's parameters and moments before the next one's.
    step_s = statistics.median(times[warmup:])
    tokens_per_s = batch * seq / step_s
    rows.append(
      {
        "size": size,
        "impl": impl,
        "params": model_lib.param_count(cfg),
        "vocab": cfg.vocab_size,
        "seq": seq,
        "batch": batch,
        "dtype": model_lib.compute_dtype_of(cfg),
        "remat": cfg.remat,
        "loss_chunk": loss_chunk,
        "attention": model_lib.attention_implementation(cfg),
        "layers": "scanned" if model_lib.scans_layers(cfg) else "unrolled",
        "devices": len(devices),
        "device_kind": devices[0].device_kind,
        "xla_flags": os.environ.get("XLA_FLAGS", "").strip(),
        "compile_s": compile_s,
        "step_s": step_s,
        "step_s_all": times[warmup:],
        "tokens_per_s": tokens_per_s,
        "flops_per_s": flops_per_token * tokens_per_s,
        "mfu": None if peak is None else flops_per_token * tokens_per_s / (peak * len(devices)),
        "losses": losses,
        "program_bytes": (
          stats.argument_size_in_bytes
          + stats.output_size_in_bytes
          + stats.temp_size_in_bytes
          - stats.alias_size_in_bytes
        ),
        "peak_bytes": _peak_bytes(),
      }
    )
  for row in rows:
    row["over_reference"] = row["step_s"] / rows[-1]["step_s"]
  return rows


def bench_methods(
  cfg: model_lib.ModelConfig, entries: list[str], *, seq: int, batch: int, steps: int, warmup: int
) -> list[tuple[str, ...]]:
  """Rows of the methods benchmark: each method's train step on the same base, against full tuning."""
  from scaling import methods  # Here: `train` needs none of the methods.

  tx = train.make_optimizer(train.TrainConfig(batch_size=batch, seq_len=seq, warmup_steps=0, schedule="constant"))
  mesh, rules = mesh_lib.make_mesh({"data": -1}), mesh_lib.DEFAULT_RULES
  batch_sh = mesh_lib.batch_sharding(mesh, rules)
  data = random_batch(cfg, batch, seq, batch_sh)
  measured = []
  for entry in entries:
    method = methods.get_method(entry)
    with mesh_lib.activate(mesh, rules):
      create = lambda: method.prepare(model_lib.Transformer(cfg, nnx.Rngs(0)), nnx.Rngs(1))
      graphdef, state = mesh_lib.create_sharded(create, mesh, rules)
      graphdef, params, frozen = nnx.split(nnx.merge(graphdef, state), method.trainable, ...)
      params, frozen = nnx.to_pure_dict(params), nnx.to_pure_dict(frozen)
      sharding = lambda tree: jax.tree.map(lambda x: x.sharding, tree)
      state_sh = train.state_shardings(tx, params, sharding(params), mesh)
      train_state = {
        "step": jnp.zeros((), jnp.int32),
        "params": params,
        "opt": jax.jit(tx.init, out_shardings=state_sh["opt"])(params),
        "tokens": jnp.zeros((), jnp.float32),
      }
      compiled = (
        train.jit_step(graphdef, tx, state_sh, sharding(frozen), batch_sh).lower(train_state, frozen, data).compile()
      )
      times = []
      for _ in range(warmup + steps):
        t0 = time.perf_counter()
        train_state, _ = jax.block_until_ready(compiled(train_state, frozen, data))
        times.append(time.perf_counter() - t0)
    stats = compiled.memory_analysis()
    memory = (
      stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes - stats.alias_size_in_bytes
    )
    p = sum(x.size for x in jax.tree.leaves(params))
    measured.append((entry, p, statistics.median(times[warmup:]), memory))
  full = next((m for m in measured if m[0] == "full"), measured[0])
  return [
    (
      name,
      f"{p:,}",
      f"{step * 1e3:.2f}",
      f"{batch * seq / step:,.0f}",
      f"{memory / 2**20:,.1f}",
      f"{step / full[2]:.2f}x",
      f"{memory / full[3]:.2f}x",
    )
    for name, p, step, memory in measured
  ]


def train_table(rows: list[dict]) -> list[str]:
  """The training-step benchmark as text: a title, a header and a row per (size, implementation)."""
  r = rows[0]
  lines = [
    f"train: ours (Flax NNX, scaling.train.jit_step) against a plain-JAX reference on {r['devices']} x "
    f"{r['device_kind']}; vocab {r['vocab']}, {r['batch']} x {r['seq']} tokens, {r['dtype']}, "
    f"remat {r['remat']}, attention {r['attention']}, layers {r['layers']}, our loss in chunks of "
    f"{r.get('loss_chunk') or 'the whole sequence'}; median of {len(r['step_s_all'])} steps"
    + (f"; XLA_FLAGS {r['xla_flags']}" if r.get("xla_flags") else ""),
    f"{'size':>9} {'impl':>9} {'params':>14} {'compile s':>9} {'step ms':>9} {'tokens/s':>11} {'TFLOP/s':>8} "
    f"{'MFU':>6} {'loss@0':>8} {'program MiB':>11} {'peak MiB':>9} {'ours/ref':>8}",
  ]
  mib = lambda b: "-" if b is None else f"{b / 2**20:,.0f}"
  for r in rows:
    mfu = "-" if r["mfu"] is None else f"{r['mfu']:.1%}"
    lines.append(
      f"{r['size']:>9} {r['impl']:>9} {r['params']:>14,} {r['compile_s']:>9.1f} {r['step_s'] * 1e3:>9.2f} "
      f"{r['tokens_per_s']:>11,.0f} {r['flops_per_s'] / 1e12:>8.3g} {mfu:>6} {r['losses'][0]:>8.4f} "
      f"{mib(r['program_bytes']):>11} {mib(r['peak_bytes']):>9} {r['over_reference']:>7.2f}x"
    )
  return lines


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


def bench_eft(
  workdir: str, n1: str | None, n2: str | None, d_f: int | None, k: int, tokens: int, batches: tuple[int, ...] = (1, 32)
) -> list[tuple[str, str]]:
  """Rows of the EFT decoding benchmark table."""
  # Here, not at the top: `train` runs where TFDS, grain and ml_collections are not installed.
  from scaling import context as context_lib
  from scaling import results
  from scaling import run as run_lib

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


def bench_grid(workdir: str, lanes: int, sizes: tuple[str, ...] = ()) -> list[tuple[str, str]]:
  """Rows of the packing benchmark: a finished study's fine-tunes, one by one and packed."""
  import shutil
  import tempfile

  from scaling import grid, results
  from scaling import run as run_lib
  from scaling.kinds import finetune

  root = epath.Path(workdir)
  specs = sorted((root / "runs").glob("*/spec.json")) if (root / "runs").exists() else []
  runs = [grid.Run.from_json(json.loads(p.read_text())) for p in specs]
  bases = {r.id: r for r in runs if r.kind in grid.BASE_KINDS and results.read_result(root / "runs" / r.id)}
  tunes = [
    r for r in runs if r.kind == "finetune" and r.config["base"] in bases and (not sizes or r.config["size"] in sizes)
  ]
  if not tunes:
    raise SystemExit(f"no fine-tunes with finished bases in {workdir}: run the study first (make study)")
  # Runs of a pack are consecutive in a study's plan: here, fine-tunes of one pack key in a row.
  tunes.sort(key=lambda r: (finetune.pack_key(r), r.config["d_f"], r.config["seed"]))

  def execute_all(mode_lanes: int) -> tuple[float, list[dict]]:
    """Seconds and records of every fine-tune, in a scratch copy of the workdir's bases and data."""
    with tempfile.TemporaryDirectory() as scratch:
      scratch = epath.Path(scratch)
      for base in {r.config["base"] for r in tunes}:
        shutil.copytree(root / "runs" / base, scratch / "runs" / base)
      os.symlink(os.path.abspath(root / "data"), scratch / "data")  # Prepared datasets: read only.
      mine = [dataclasses.replace(r, execution={**r.execution, "pack": mode_lanes}) for r in tunes]
      for r in mine:
        (scratch / "runs" / r.id).mkdir(parents=True)
      before, t0 = timing.totals(), time.perf_counter()
      records = [rec for group in run_lib.packs(mine) for rec in run_lib.execute_pack(group, scratch)]
      seconds = time.perf_counter() - t0
      phases = {k: v - before.get(k, 0.0) for k, v in timing.totals().items()}
      return seconds, records, timing.summary(seconds, phases).removeprefix("time: ")

  timed = {}
  for mode in (1, lanes):
    execute_all(mode)  # Compiles every program of the mode (and fills the persistent cache).
    timed[mode] = execute_all(mode)
  (alone_s, alone, alone_phases), (packed_s, packed, packed_phases) = timed[1], timed[lanes]
  worst = max(
    abs(b["metrics"][k] - v) / max(abs(v), 1e-12) for a, b in zip(alone, packed) for k, v in a["metrics"].items()
  )
  per_hour = lambda seconds: len(tunes) * 3600 / seconds
  return [
    ("fine-tunes", f"{len(tunes)} ({', '.join(sorted({r.config['size'] for r in tunes}))}) of {workdir}"),
    ("one by one", f"{alone_s:.1f} s, {per_hour(alone_s):,.0f} runs/hour"),
    ("  where its time goes", alone_phases),
    (f"packed (up to {lanes} lanes)", f"{packed_s:.1f} s, {per_hour(packed_s):,.0f} runs/hour"),
    ("  where its time goes", packed_phases),
    ("speed-up", f"{alone_s / packed_s:.2f}x"),
    ("largest relative metric difference", f"{worst:.2e}"),
  ]


def print_table(title: str, rows: list[tuple[str, str]]) -> None:
  width = max(len(k) for k, _ in rows)
  print(title)
  for k, v in rows:
    print(f"  {k.ljust(width)}  {v}")


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("which", choices=["train", "methods", "laws", "eft", "grid"])
  parser.add_argument("--methods", default="full,lora,prompt,reft,svf", help="methods: methods (default options).")
  parser.add_argument("--size", default="d128l4", help="train: ladder sizes, comma-separated.")
  parser.add_argument("--seq", type=int, default=256, help="train: tokens per sequence.")
  parser.add_argument("--batch", type=int, default=8, help="train: sequences per step, over all devices.")
  parser.add_argument(
    "--dtype",
    default="auto",
    choices=model_lib.CHOICES["compute_dtype"],
    help="train, methods: compute dtype (auto: bfloat16 on accelerators, float32 on CPUs).",
  )
  parser.add_argument("--remat", default="none", choices=model_lib.CHOICES["remat"], help="train: remat policy.")
  parser.add_argument("--attention", default="auto", choices=model_lib.CHOICES["attention"], help="train: kernel.")
  parser.add_argument(
    "--layer-loop",
    default="auto",
    choices=model_lib.CHOICES["layer_loop"],
    help="train: blocks unrolled or scanned (auto: scanned on accelerators).",
  )
  parser.add_argument("--vocab", type=int, default=32768, help="train: vocabulary, as a real LM's, not our world's.")
  parser.add_argument(
    "--loss-chunk",
    type=int,
    default=0,
    help="train: our loss's logits made this many positions at a time (0: all at once).",
  )
  parser.add_argument("--steps", type=int, default=10, help="train: timed steps per implementation.")
  parser.add_argument("--warmup", type=int, default=2, help="train: untimed steps after compiling.")
  parser.add_argument("--json", help="train: also write the rows, every measurement included, to this file.")
  parser.add_argument("--hlo", help="train: also write each compiled step's optimised HLO into this folder.")
  parser.add_argument("--points", type=int, default=40, help="laws: data points.")
  parser.add_argument("--bootstrap", type=int, default=1000, help="laws: bootstrap replicates.")
  parser.add_argument("--workdir", default="runs/smoke", help="eft, grid: a finished study's workdir.")
  parser.add_argument("--lanes", type=int, default=8, help="grid: the most fine-tunes per pack.")
  parser.add_argument("--sizes", default="", help="grid: only the fine-tunes of these bases, comma-separated.")
  parser.add_argument("--n1", help="eft: the base size (default: the study's largest).")
  parser.add_argument("--n2", help="eft: the fine-tuned size (default: the study's smallest).")
  parser.add_argument("--d-f", type=int, help="eft: the fine-tune's D_f (default: the largest).")
  parser.add_argument("--k", type=int, default=4, help="eft: tokens drafted per target pass.")
  parser.add_argument("--tokens", type=int, default=48, help="eft: tokens generated per prompt.")
  args = parser.parse_args(argv)
  if args.loss_chunk < 0:
    parser.error(f"--loss-chunk={args.loss_chunk}; allowed: 0 (no chunks) or a positive integer")
  if args.which in ("train", "methods") and args.batch % jax.device_count():
    parser.error(
      f"--batch={args.batch} does not split over the {jax.device_count()} devices; allowed: a multiple "
      f"of {jax.device_count()}"
    )
  if args.which == "train":
    try:
      cfgs = {
        size: model_lib.ladder_config(
          size,
          args.vocab,
          compute_dtype=args.dtype,
          remat=args.remat,
          attention=args.attention,
          layer_loop=args.layer_loop,
        )
        for size in args.size.split(",")
      }
      for cfg in cfgs.values():
        cfg.validate()
        model_lib.attention_implementation(cfg)  # A kernel this machine lacks fails here, in one line.
    except ValueError as e:
      parser.error(str(e))
    rows = [
      row
      for size, cfg in cfgs.items()
      for row in bench_train(
        size,
        cfg,
        seq=args.seq,
        batch=args.batch,
        steps=args.steps,
        warmup=args.warmup,
        loss_chunk=args.loss_chunk,
        hlo_dir=args.hlo,
      )
    ]
    print("\n".join(train_table(rows)))
    if args.json:
      with open(args.json, "w") as f:
        json.dump(rows, f, indent=1)
    return
  if args.which == "methods":
    from scaling import methods  # Here: `train` needs none of the methods.

    try:
      cfg = model_lib.ladder_config(args.size, args.vocab, compute_dtype=args.dtype)
      for name in args.methods.split(","):
        methods.get_method(name).check(cfg, args.seq)
    except ValueError as e:
      parser.error(str(e))
    rows = bench_methods(
      cfg, args.methods.split(","), seq=args.seq, batch=args.batch, steps=args.steps, warmup=args.warmup
    )
    header = ("method", "P", "step ms", "tokens/s", "program MiB", "step / full", "memory / full")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print(
      f"methods: train steps on {args.size} (vocab {args.vocab}, {args.batch} x {args.seq} tokens, "
      f"{model_lib.compute_dtype_of(cfg)}) "
      f"on {jax.device_count()} x {jax.devices()[0].device_kind}; median of {args.steps} steps"
    )
    for r in [header, *rows]:
      print("  ".join(c.rjust(w) for c, w in zip(r, widths)))
    return
  from scaling import run as run_lib  # Imports TFDS: not for `train`.

  run_lib.setup_runtime()
  if args.which == "laws":
    print_table(f"laws: additive law, {args.points} points, Hoffmann's grid", bench_laws(args.points, args.bootstrap))
  elif args.which == "grid":
    print_table(
      f"grid: fine-tunes one by one against packed ({jax.devices()[0].platform})",
      bench_grid(args.workdir, args.lanes, tuple(filter(None, args.sizes.split(",")))),
    )
  else:
    print_table(
      f"eft: plain against speculative EFT decoding ({jax.devices()[0].platform})",
      bench_eft(args.workdir, args.n1, args.n2, args.d_f, args.k, args.tokens),
    )


if __name__ == "__main__":
  main(sys.argv[1:])
