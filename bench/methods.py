"""The fine-tuning methods benchmark (`python -m bench methods`): the train step of each method
(default options) on the same base, against full tuning: trainable parameters P, median step time,
tokens per second, and the compiled step's memory (arguments, outputs, temporaries), each also as a
ratio to full tuning's."""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
from flax import nnx

from bench.train import random_batch
from scaling import mesh as mesh_lib
from scaling import methods, train
from scaling import model as model_lib
from scaling.memory import memory_of

HEADER = ("method", "P", "step ms", "tokens/s", "program MiB", "step / full", "memory / full")


def base_config(size: str, vocab_size: int, compute_dtype: str, entries: list[str], seq: int) -> model_lib.ModelConfig:
  """The base's model config, checked against every method of `entries`; ValueError names what a
  method does not allow."""
  cfg = model_lib.ladder_config(size, vocab_size, compute_dtype=compute_dtype)
  for entry in entries:
    methods.get_method(entry).check(cfg, seq)
  return cfg


def measure(
  cfg: model_lib.ModelConfig, entries: list[str], *, seq: int, batch: int, steps: int, warmup: int
) -> list[tuple[str, ...]]:
  """Rows of the methods benchmark: each method's train step on the same base, against full tuning."""
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
    p = sum(x.size for x in jax.tree.leaves(params))
    measured.append((entry, p, statistics.median(times[warmup:]), memory_of(compiled)["peak"]))
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


def table(title: str, rows: list[tuple[str, ...]]) -> list[str]:
  """The methods benchmark as text: the title, then the header and the rows in right-aligned columns."""
  widths = [max(len(r[i]) for r in [HEADER, *rows]) for i in range(len(HEADER))]
  return [title, *("  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in [HEADER, *rows])]
