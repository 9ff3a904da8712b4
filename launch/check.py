"""Memory check before launch: every distinct training step of a study, and every distinct mixture
that its evaluation runs (eft, transplant) score with, compiled ahead of time for the target
devices, with its per-device memory against the device's.

    python -m launch.check --config configs/smoke.py [--topology v5p-32] [--config.a.b=value]

Without --topology the target is this machine's devices. With it, the steps are compiled for a
Cloud TPU slice through libtpu (`pip install -e '.[tpu]'`) on this CPU-only machine: nothing
runs, and nobody pays for a slice to find out that a run does not fit. Exits 1 if one does not.
On this machine's devices, fine-tunes are checked as launch.local trains them: packed, as lanes of
one step (column `lanes`); the pod launchers run one spec per process.
"""

from __future__ import annotations

import dataclasses
import math
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
from scaling import evaluate, grid, kinds, methods, pack, sources, study_fields, train
from scaling import mesh as mesh_lib
from scaling import model as model_lib
from scaling import run as run_lib
from scaling import study as study_lib
from scaling.memory import memory_of

USAGE = "python -m launch.check --config CONFIG.py [--topology v5p-32] [--config.a.b=value]"

GiB = 1024**3
# Kinds whose runs keep a model, trained here or imported, that evaluation runs hold: bases and fine-tunes.
MODEL_KINDS = grid.BASE_KINDS + grid.FINETUNE_KINDS


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


def sharded_model(
  cfg: model_lib.ModelConfig, method, mesh: jax.sharding.Mesh, rules
) -> tuple[nnx.GraphDef, dict, dict]:
  """A model prepared by `method` (None: the bare model) as shapes with their shardings on the mesh:
  (graphdef, what the method trains, the frozen rest); nothing is allocated."""
  abstract = nnx.eval_shape(context_lib.model_creator(cfg, method, 0))
  graphdef, trainable, frozen = nnx.split(abstract, method.trainable if method else nnx.Param, ...)
  place = lambda state: jax.tree.map(
    lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
    nnx.to_pure_dict(state),
    mesh_lib.state_shardings(state, mesh, rules),
  )
  return graphdef, place(trainable), place(frozen)


def abstract_batch(batch_size: int, length: int, mesh: jax.sharding.Mesh, rules) -> dict:
  """The shapes of a batch of `batch_size` rows of `length` tokens, split over the data axes."""
  batch_sh = mesh_lib.batch_sharding(mesh, rules)
  tokens = jax.ShapeDtypeStruct((batch_size, length), "int32", sharding=batch_sh)
  return {
    "inputs": tokens,
    "targets": tokens,
    "weights": jax.ShapeDtypeStruct(tokens.shape, "float32", sharding=batch_sh),
    "prompt_len": jax.ShapeDtypeStruct((batch_size,), "int32", sharding=batch_sh),
  }


def device_bytes(tree) -> int:
  """Bytes of sharded shapes that one device holds (each array's shard)."""
  return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(tree))


def compiled_memory(run: grid.Run, vocab_size: int, mesh: jax.sharding.Mesh, rules, lanes: int = 1) -> tuple[int, dict]:
  """(parameters, per-device memory stats) of the run's train step, compiled for the mesh; with
  `lanes` > 1, of the packed step that trains that many such runs at once."""
  c = run.config
  cfg = context_lib.spec_model_config(c, c["size"], lambda: vocab_size)
  method = context_lib.method_of(c) if "method" in c else None
  graphdef, params, frozen = sharded_model(cfg, method, mesh, rules)
  param_sh, frozen_sh = (jax.tree.map(lambda x: x.sharding, tree) for tree in (params, frozen))
  tcfg = train.TrainConfig(**c["train"])
  loss_chunk = run.execution.get("loss_chunk", 0)
  tx = train.make_optimizer(tcfg)
  state_sh = train.state_shardings(tx, params, param_sh, mesh)  # Outside the mesh context: tx.init runs.
  batch_sh = mesh_lib.batch_sharding(mesh, rules)
  batch = abstract_batch(tcfg.batch_size, tcfg.seq_len, mesh, rules)
  state = train.abstract_state(tx, params, state_sh)
  with mesh_lib.activate(mesh, rules):
    if lanes == 1:
      lowered = train.jit_step(graphdef, tx, state_sh, frozen_sh, batch_sh, loss_chunk).lower(state, frozen, batch)
    else:  # Laid out as scaling.pack lays out its lanes.
      axes, width = pack.lane_layout(mesh, rules, (param_sh, frozen_sh), lanes)
      stacked = lambda tree: jax.tree.map(
        lambda x: jax.ShapeDtypeStruct((width, *x.shape), x.dtype, sharding=pack.stacked_sharding(x.sharding, axes)),
        tree,
      )
      vector = pack.stacked_sharding(NamedSharding(mesh, PartitionSpec()), axes)
      per_lane = lambda dtype: jax.ShapeDtypeStruct((width,), dtype, sharding=vector)
      lowered = pack.step_fn(graphdef, tcfg, loss_chunk, mesh=mesh, axes=axes).lower(
        stacked(state), frozen, stacked(batch), per_lane("float32"), per_lane("bool")
      )
    compiled = lowered.compile()
  return model_lib.param_count(cfg), memory_of(compiled)


def mixture_terms(run: grid.Run, runs: dict[str, grid.Run]) -> list[grid.Run]:
  """The runs whose kept models an evaluation run scores with, one per model id of its spec, in the
  spec's order (an id may come twice: the base of N1 is that of N2 when N1 = N2)."""
  return [runs[v] for v in run.config.values() if isinstance(v, str) and v in runs and runs[v].kind in MODEL_KINDS]


def kept_method(run: grid.Run) -> dict | None:
  """The method spec of the model that a run keeps; None for a bare model: a base, or an imported
  fine-tune, whose spec names its method by label only."""
  method = run.config.get("method")
  return method if isinstance(method, dict) else None


def kept_label(run: grid.Run) -> str:
  """The label of the method of the model that a run keeps; "base" for a bare model."""
  method = kept_method(run)
  return methods.label(method) if method else "base"


def mixture_shapes(runs: list[grid.Run], length: int) -> dict[tuple, tuple[grid.Run, list[grid.Run]]]:
  """One evaluation run per distinct mixture, with its terms: (kind, block, each term's (size, method,
  which model it is), eval batch, length). Evaluation runs keep no model and train nothing; they
  score with the models of other runs of the study (eft, transplant)."""
  by_id = {r.id: r for r in runs}
  shapes: dict[tuple, tuple[grid.Run, list[grid.Run]]] = {}
  for r in runs:
    terms = mixture_terms(r, by_id)
    if r.kind in MODEL_KINDS or "train" in r.config or not terms:
      continue
    ids = [t.id for t in terms]
    described = tuple((t.config["size"], kept_label(t), ids.index(t.id)) for t in terms)
    key = (r.kind, str(sorted(r.config["block"].items())), described, r.execution["eval_batch_size"], length)
    shapes.setdefault(key, (r, terms))
  return shapes


def mixture_memory(
  run: grid.Run, terms: list[grid.Run], vocab_size: int, mesh: jax.sharding.Mesh, rules, length: int, programs: dict
) -> tuple[int, dict]:
  """(parameters, per-device memory stats) of an evaluation run scoring an eval batch of `length` tokens
  with the models of `terms`, all held at once, as scaling.evaluate.scores scores it: each term's logits
  by a program of its own, then their combination. `programs` keeps compiled programs' memory by shape
  across calls: a study's mixtures share their models' shapes."""
  batch = abstract_batch(run.execution["eval_batch_size"], length, mesh, rules)
  models: dict[str, tuple] = {}  # By run id: (config, method label, graphdef, params, frozen).
  for t in terms:
    if t.id not in models:  # As context.load_run_model builds it: with the evaluating run's model options.
      cfg = context_lib.spec_model_config(run.config, t.config["size"], lambda: vocab_size)
      method = context_lib.method_of(t.config) if kept_method(t) else None
      models[t.id] = (cfg, kept_label(t), *sharded_model(cfg, method, mesh, rules))
  logits, memories = [], []
  with mesh_lib.activate(mesh, rules):
    for cfg, label, graphdef, params, frozen in (models[t.id] for t in terms):
      key = ("logits", cfg, label, batch["inputs"])
      if key not in programs:  # The programs of evaluate.scores.
        lowered = evaluate._logits.lower(graphdef, params, frozen, batch["inputs"], batch["prompt_len"])
        compiled = lowered.compile()
        out = lowered.out_info
        programs[key] = (
          jax.ShapeDtypeStruct(out.shape, out.dtype, sharding=compiled.output_shardings),
          memory_of(compiled),
        )
      logits.append(programs[key][0])
      memories.append(programs[key][1])
    key = ("combined", *logits)
    if key not in programs:
      weights = jax.ShapeDtypeStruct((len(terms),), "float32", sharding=NamedSharding(mesh, PartitionSpec()))
      programs[key] = memory_of(
        evaluate._combined_scores.lower(tuple(logits), weights, batch["targets"], batch["weights"]).compile()
      )
    combined = programs[key]
  # At most what the evaluation holds at once: its models, the batch, every term's logits (all live
  # when they are combined) and the combination's outputs; the programs run one after another, so
  # only the largest one's temporaries count. A run that scores with one model made of its models
  # (a transplant) is checked as if it scored with each: one set of logits more than it holds.
  held = device_bytes([(params, frozen) for *_, params, frozen in models.values()]) + device_bytes(batch)
  memory = {
    "argument": held,
    "output": sum(m["output"] for m in memories) + combined["output"],
    "temp": max(m["temp"] for m in (*memories, combined)),
    "alias": 0,
  }
  memory["peak"] = memory["argument"] + memory["output"] + memory["temp"]
  return sum(model_lib.param_count(m[0]) for m in models.values()), memory


def check(study, tgt: Target) -> list[dict]:
  """A row per distinct train step and per distinct evaluation mixture of the (validated) study: its
  per-device memory and whether it fits."""
  require_full_mesh(study, len(tgt.devices), tgt.name)
  mesh = mesh_lib.make_mesh(study.mesh.shape.to_dict(), list(tgt.devices))
  rules = mesh_lib.parse_rules(study.mesh.rules)
  vocab = sources.model_vocab_size(study_fields.world_config(study), study.data.tokenizer)
  runs = kinds.expand(study)
  rows = []

  def add(size: str, method: str, batch: int, length: int, lanes: int, params: int, memory: dict) -> None:
    fits = None if tgt.memory_bytes is None else memory["peak"] <= tgt.memory_bytes
    rows.append(
      {
        "size": size,
        "method": method,
        "batch": batch,
        "seq_len": length,
        "lanes": lanes,
        "params": params,
        **memory,
        "device_memory": tgt.memory_bytes,
        "fits": fits,
      }
    )

  for (size, _, method, batch, length, lanes), run in step_shapes(runs, tgt.packs).items():
    add(size, method, batch, length, lanes, *compiled_memory(run, vocab, mesh, rules, lanes))
  # Evaluation batches are as long as the shortest multiple of 8 that fits their split's examples
  # (data.pipeline.eval_batches), and a task's are cut to the fine-tuning length (Context.eval_length),
  # so its test batches are checked at that length; only an imported fine-tune's are not cut.
  length = -(-study.finetune.train.seq_len // 8) * 8
  programs: dict = {}
  for (kind, *_, batch, _), (run, terms) in mixture_shapes(runs, length).items():
    sizes = "+".join(dict.fromkeys(t.config["size"] for t in terms))  # N1+N2 for an EFT.
    add(sizes, kind, batch, length, 1, *mixture_memory(run, terms, vocab, mesh, rules, length, programs))
  return rows


def format_rows(rows: list[dict], tgt: Target) -> str:
  """The table that the command prints."""
  unit, scale = ("GiB", GiB) if max(r["peak"] for r in rows) >= GiB else ("MiB", 1024**2)
  gib = lambda b: "n/a" if b is None else f"{b / scale:.2f}"
  device = "unknown (host memory)" if tgt.memory_bytes is None else f"{tgt.memory_bytes / GiB:g} GiB"
  # Mixtures name all their sizes (d2048l24+d1024l24) and their kind (transplant): wider columns.
  size_w, method_w = (max(width, *(len(r[k]) for r in rows)) for k, width in (("size", 10), ("method", 9)))
  lines = [
    f"per-device memory ({unit}) on {tgt.name}, mesh over {len(tgt.devices)} devices; device memory {device}",
    f"{'size':>{size_w}} {'method':>{method_w}} {'batch x len':>12} {'lanes':>5} {'params':>14} "
    f"{'arguments':>10} {'outputs':>9} {'temps':>9} {'peak':>9}  fits",
  ]
  for r in rows:
    fits = "n/a" if r["fits"] is None else "yes" if r["fits"] else "NO"
    shape = f"{r['batch']} x {r['seq_len']}"
    lines.append(
      f"{r['size']:>{size_w}} {r['method']:>{method_w}} {shape:>12} {r['lanes']:>5} {r['params']:>14,} "
      f"{gib(r['argument']):>10} {gib(r['output']):>9} {gib(r['temp']):>9} {gib(r['peak']):>9}  {fits}"
    )
  return "\n".join(lines)


def report(rows: list[dict], tgt: Target) -> None:
  """Prints the table; exits 1 if a row does not fit."""
  print(format_rows(rows, tgt))
  if any(r["fits"] is False for r in rows):
    sys.exit("some runs do not fit in device memory (fits: NO)")


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
  report(rows, tgt)


if __name__ == "__main__":
  # Defined here, not on import: launch.local defines --config too, and tests import both.
  config_flags.DEFINE_config_file("config", None, "Study config file (get_config()).", lock_config=False)
  flags.DEFINE_string(
    "topology",
    None,
    "A Cloud TPU slice (v4-8, v5p-32, v5e-16, v6e-8, or a topology "
    "name such as v5e:4x4); default: this machine's devices.",
  )
  app.run(main, flags_parser=cli.flags_parser(USAGE))
