"""Memory check before launch: every distinct training step of a study, compiled ahead of time for
the target devices, with its per-device memory against the device's.

    python -m launch.check --config configs/smoke.py [--topology v5p-32] [--config.a.b=value]

Without --topology the target is this machine's devices. With it, the steps are compiled for a
Cloud TPU slice through libtpu (`pip install -e '.[tpu]'`) on this CPU-only machine: nothing
runs, and nobody pays for a slice to find out that a run does not fit. Exits 1 if one does not.
On this machine's devices, fine-tunes are checked as launch.local trains them: packed, as lanes of
one step (column `lanes`); the pod launchers run one spec per process.
"""

from __future__ import annotations

import dataclasses
import os
import sys

import jax
from absl import app, flags
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec
from ml_collections import config_flags

from launch import cli
from launch.slices import CheckError, require_full_mesh, tpu_topology
from scaling import context as context_lib
from scaling import grid, methods, pack, sources, train
from scaling import mesh as mesh_lib
from scaling import model as model_lib
from scaling import run as run_lib
from scaling import study as study_lib

USAGE = "python -m launch.check --config CONFIG.py [--topology v5p-32] [--config.a.b=value]"

GiB = 1024**3

@dataclasses.dataclass(frozen=True)
class Target:
  """Devices to compile for, and the memory of each (None where unknown, as on a CPU)."""

  name: str
  devices: tuple
  memory_bytes: int | None
  packs: bool = False  # Whether fine-tunes train packed, as launch.local trains them on this machine.


def target(topology: str | None) -> Target:
  """The devices of a TPU slice name (compile-only), or this machine's."""
  if topology is None:
    devices = tuple(jax.devices())
    stats = devices[0].memory_stats() or {}
    return Target(f"local {devices[0].platform} x{len(devices)}", devices, stats.get("bytes_limit"), packs=True)
  topo_name, hbm = tpu_topology(topology)
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")  # No TPU VM here: no peers to look for.
  try:
    from jax.experimental import topologies

    kwargs = {"chip_config_name": "megacore"} if topology.startswith(("v4", "v5p")) else {}
    desc = topologies.get_topology_desc(topo_name, "tpu", **kwargs)
  except Exception as e:  # libtpu is absent, or refuses the topology.
    raise CheckError(f"--topology={topology!r} ({topo_name}) needs libtpu: pip install -e '.[tpu]' ({e})") from None
  return Target(f"{topology} ({topo_name})", tuple(desc.devices), hbm * GiB)


def step_shapes(runs: list[grid.Run], packs: bool) -> dict[tuple, grid.Run]:
  """One run per distinct training step: (size, block, method, batch, length, lanes). With `packs`,
  fine-tunes count as the packs that launch.local trains as lanes of one step (scaling.pack)."""
  lanes = {r.id: len(group) for group in (run_lib.packs(runs) if packs else [[r] for r in runs]) for r in group}
  shapes: dict[tuple, grid.Run] = {}
  for r in runs:
    if "train" not in r.config:  # Evaluation-only kinds (eft) compile no train step.
      continue
    c, t = r.config, r.config["train"]
    method = methods.label(c["method"]) if "method" in c else "pretrain"
    key = (c["size"], str(sorted(c["block"].items())), method, t["batch_size"], t["seq_len"], lanes[r.id])
    shapes.setdefault(key, r)
  return shapes


def compiled_memory(run: grid.Run, vocab_size: int, mesh: jax.sharding.Mesh, rules,
                    lanes: int = 1) -> tuple[int, dict]:
  """(parameters, per-device memory stats) of the run's train step, compiled for the mesh; with
  `lanes` > 1, of the packed step that trains that many such runs at once."""
  c = run.config
  cfg = context_lib.spec_model_config(c, c["size"], lambda: vocab_size)
  method = context_lib.method_of(c) if "method" in c else None
  abstract = nnx.eval_shape(context_lib.model_creator(cfg, method, 0))
  graphdef, trainable, frozen = nnx.split(abstract, method.trainable if method else nnx.Param, ...)
  param_sh = mesh_lib.state_shardings(trainable, mesh, rules)
  frozen_sh = mesh_lib.state_shardings(frozen, mesh, rules)
  params, frozen = nnx.to_pure_dict(trainable), nnx.to_pure_dict(frozen)
  tcfg = train.TrainConfig(**c["train"])
  loss_chunk = run.execution.get("loss_chunk", 0)
  tx = train.make_optimizer(tcfg)
  state_sh = train.state_shardings(tx, params, param_sh, mesh)  # Outside the mesh context: tx.init runs.
  batch_sh = mesh_lib.batch_sharding(mesh, rules)
  tokens = jax.ShapeDtypeStruct((tcfg.batch_size, tcfg.seq_len), "int32", sharding=batch_sh)
  batch = {"inputs": tokens, "targets": tokens,
           "weights": jax.ShapeDtypeStruct(tokens.shape, "float32", sharding=batch_sh),
           "prompt_len": jax.ShapeDtypeStruct((tcfg.batch_size,), "int32", sharding=batch_sh)}
  state = train.abstract_state(tx, params, state_sh)
  frozen = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), frozen, frozen_sh)
  with mesh_lib.activate(mesh, rules):
    if lanes == 1:
      lowered = train.jit_step(graphdef, tx, state_sh, frozen_sh, batch_sh, loss_chunk).lower(state, frozen, batch)
    else:  # Laid out as scaling.pack lays out its lanes.
      axes, width = pack.lane_layout(mesh, rules, (param_sh, frozen_sh), lanes)
      stacked = lambda tree: jax.tree.map(lambda x: jax.ShapeDtypeStruct(
          (width, *x.shape), x.dtype, sharding=pack.stacked_sharding(x.sharding, axes)), tree)
      vector = pack.stacked_sharding(NamedSharding(mesh, PartitionSpec()), axes)
      per_lane = lambda dtype: jax.ShapeDtypeStruct((width,), dtype, sharding=vector)
      lowered = pack.step_fn(graphdef, tcfg, loss_chunk, mesh=mesh, axes=axes).lower(
          stacked(state), frozen, stacked(batch), per_lane("float32"), per_lane("bool"))
    compiled = lowered.compile()
  stats = compiled.memory_analysis()
  memory = {k: int(getattr(stats, f"{k}_size_in_bytes")) for k in ("argument", "output", "temp", "alias")}
  memory["peak"] = memory["argument"] + memory["output"] + memory["temp"] - memory["alias"]
  return model_lib.param_count(cfg), memory


def check(study, tgt: Target) -> list[dict]:
  """A row per distinct train step of the (validated) study: its per-device memory and whether it fits."""
  require_full_mesh(study, len(tgt.devices), tgt.name)
  mesh = mesh_lib.make_mesh(study.mesh.shape.to_dict(), list(tgt.devices))
  rules = mesh_lib.parse_rules(study.mesh.rules)
  vocab = sources.model_vocab_size(study_lib.world_config(study), study.data.tokenizer)
  rows = []
  for (size, _, method, batch, length, lanes), run in step_shapes(grid.expand(study), tgt.packs).items():
    params, memory = compiled_memory(run, vocab, mesh, rules, lanes)
    fits = None if tgt.memory_bytes is None else memory["peak"] <= tgt.memory_bytes
    rows.append({"size": size, "method": method, "batch": batch, "seq_len": length, "lanes": lanes,
                 "params": params, **memory, "device_memory": tgt.memory_bytes, "fits": fits})
  return rows


def format_rows(rows: list[dict], tgt: Target) -> str:
  """The table that the command prints."""
  unit, scale = ("GiB", GiB) if max(r["peak"] for r in rows) >= GiB else ("MiB", 1024**2)
  gib = lambda b: "n/a" if b is None else f"{b / scale:.2f}"
  device = "unknown (host memory)" if tgt.memory_bytes is None else f"{tgt.memory_bytes / GiB:g} GiB"
  lines = [f"per-device memory ({unit}) on {tgt.name}, mesh over {len(tgt.devices)} devices; device memory {device}",
           f"{'size':>10} {'method':>9} {'batch x len':>12} {'lanes':>5} {'params':>14} {'arguments':>10} {'outputs':>9} "
           f"{'temps':>9} {'peak':>9}  fits"]
  for r in rows:
    fits = "n/a" if r["fits"] is None else "yes" if r["fits"] else "NO"
    lines.append(f"{r['size']:>10} {r['method']:>9} {str(r['batch']) + ' x ' + str(r['seq_len']):>12} "
                 f"{r['lanes']:>5} {r['params']:>14,} {gib(r['argument']):>10} {gib(r['output']):>9} {gib(r['temp']):>9} "
                 f"{gib(r['peak']):>9}  {fits}")
  return "\n".join(lines)


def main(argv) -> None:
  del argv
  config, topology = flags.FLAGS.config, flags.FLAGS.topology
  if config is None:
    sys.exit(f"usage: {USAGE}")
  run_lib.setup_runtime()
  try:
    tgt = target(topology)
    study = study_lib.validate(config, len(tgt.devices))
    rows = check(study, tgt)
  except (CheckError, study_lib.StudyError) as e:
    sys.exit(f"invalid check: {e}")
  print(format_rows(rows, tgt))
  if any(r["fits"] is False for r in rows):
    sys.exit("some runs do not fit in device memory (fits: NO)")


if __name__ == "__main__":
  # Defined here, not on import: launch.local defines --config too, and tests import both.
  config_flags.DEFINE_config_file("config", None, "Study config file (get_config()).", lock_config=False)
  flags.DEFINE_string("topology", None, "A Cloud TPU slice (v4-8, v5p-32, v5e-16, v6e-8, or a topology "
                      "name such as v5e:4x4); default: this machine's devices.")
  app.run(main, flags_parser=cli.flags_parser(USAGE))
