"""The training-step benchmark (`python -m bench train`): for each ladder size, our training step
(`scaling.train.jit_step` over the Flax model, sharded by `scaling.mesh` over every local device,
data-parallel) and the plain-JAX reference step of the same model math (`bench.reference`: the
same AdamW, compute dtype, attention kernel and remat policy) on the same random batch from the
same initial parameters. Each is compiled first, then runs `warmup` untimed steps and `steps` timed
ones (each until its results are ready); a row gives the median step time, tokens per second, model
FLOP/s (`model.train_flops_per_token`, remat's recomputation not counted) and MFU against the
chip's dense peak for the compute dtype (none on a CPU), the first step's loss (equal for both
implementations up to rounding), the compiled step's memory (arguments, outputs and temporaries)
and the device's peak memory in use so far in this process, where the device reports it (so a row
bounds its implementation's peak from above), and ours' step time over the reference's. Needs only
jax, flax, optax, orbax, etils, numpy, tqdm and absl: it runs on GPU machines without the study's
data stack."""

from __future__ import annotations

import functools
import os
import statistics
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from bench import reference
from scaling import mesh as mesh_lib
from scaling import model as model_lib
from scaling import train
from scaling.memory import memory_of

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


def configs(sizes: list[str], vocab_size: int, **options) -> dict[str, model_lib.ModelConfig]:
  """The model config of each ladder size with the model `options`, checked; ValueError names a
  size, an option or an attention kernel that this machine lacks."""
  cfgs = {size: model_lib.ladder_config(size, vocab_size, **options) for size in sizes}
  for cfg in cfgs.values():
    cfg.validate()
    model_lib.attention_implementation(cfg)  # A kernel this machine lacks fails here, in one line.
  return cfgs


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
      params = jax.jit(functools.partial(reference.from_ours, cfg))(params)
      state = {"params": params, "opt": jax.jit(tx.init)(params)}
      compiled = jax.jit(functools.partial(reference.step, cfg, tx), donate_argnums=0).lower(state, batch).compile()
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


def measure(
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
        "program_bytes": memory_of(compiled)["peak"],
        "peak_bytes": _peak_bytes(),
      }
    )
  for row in rows:
    row["over_reference"] = row["step_s"] / rows[-1]["step_s"]
  return rows


def table(rows: list[dict]) -> list[str]:
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
