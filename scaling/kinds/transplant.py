"""Layer transplants: a full fine-tune with its lower (or upper) k blocks reset to its base's.

For each base of the largest pretraining budget (and each imported base), each D_f of the `transplant` group and each k
from 1 to the base's layers - 1, a run takes the full fine-tune's weights, puts the base's back
into blocks 0..k-1 (part "lower") or into the last k blocks ("upper"), and measures what is left:
test loss, knowledge and behaviour on the task, and retention against the base. If fine-tuning
acts on the upper layers, resetting them undoes the behaviour and keeps the knowledge. It trains
nothing.
"""

from __future__ import annotations

import dataclasses

import ml_collections
from flax import nnx

from scaling import context as context_lib
from scaling import decode, grid, sources
from scaling import model as model_lib
from scaling import study as study_lib
from scaling.kinds import finetune
from scaling.methods import common


def cells(study: ml_collections.ConfigDict, prior: list[grid.Run], execution: dict) -> list[grid.Run]:
  """One run per (base, D_f, part, k) of the (validated, resolved) `transplant` group."""
  t = study.transplant
  if not t.enabled:
    return []
  budget = max(study.pretrain.steps)
  finetuned = finetune.of_cell(prior, t.task, t.method, t.seed)
  world = dataclasses.asdict(study_lib.world_config(study))
  runs = []
  for base in (
    r for r in prior if r.kind == "checkpoint" or (r.kind == "pretrain" and r.config["train"]["max_steps"] == budget)
  ):
    size = base.config["size"]
    n_layers = context_lib.spec_model_config(base.config, size, lambda: 64).n_layers
    for d_f in (d_f for d_f in t.d_f if (base.id, d_f) in finetuned):  # Imported fine-tunes: where they are.
      tuned = finetuned[(base.id, d_f)]
      for part in t.parts:
        for k in range(1, n_layers):
          spec = {
            "kind": "transplant",
            "world": world,
            "size": size,
            "block": base.config["block"],
            "base": base.id,
            "finetuned": tuned.id,
            "task": t.task,
            "method": t.method,
            "d_f": d_f,
            "seed": t.seed,
            "part": part,
            "k": k,
            **study_lib.data_fields(study, t.task, (size,)),
          }
          label = f"tp-{size}-{t.task}-{t.method}-df{d_f}-{part}{k}-s{t.seed}"
          runs.append(grid.Run(grid.run_id(label, spec), "transplant", spec, (base.id, tuned.id), execution))
  return runs


def reset_blocks(n_layers: int, part: str, k: int) -> range:
  """The blocks that a transplant puts back to the base: the first k ("lower") or the last k ("upper")."""
  return range(k) if part == "lower" else range(n_layers - k, n_layers)


def execute(ctx: context_lib.Context) -> dict:
  """Evaluates the fine-tune with some blocks reset to the base; returns the result record's fields."""
  cfg = ctx.run.config
  base, tuned = (context_lib.load_run_model(ctx, cfg[k]) for k in ("base", "finetuned"))
  model, base_model = tuned.module(), base.module()
  for i in reset_blocks(len(model.blocks), cfg["part"], cfg["k"]):
    nnx.update(model.blocks[i], nnx.state(base_model.blocks[i]))
  graphdef, params, frozen = nnx.split(model, nnx.Param, ...)
  mixture = decode.Mixture.single(graphdef, nnx.to_pure_dict(params), nnx.to_pure_dict(frozen))
  metrics = context_lib.task_metrics(ctx, mixture, sources.task_of(cfg))
  metrics.update(context_lib.retention_against(ctx, mixture, ctx.dependency(cfg["base"])["metrics"]))
  mc = ctx.model_cfg
  return {
    "size": cfg["size"],
    "base": cfg["base"],
    "finetuned": cfg["finetuned"],
    "task": cfg["task"],
    "method": cfg["method"],
    "d_f": cfg["d_f"],
    "seed": cfg["seed"],
    "part": cfg["part"],
    "k": cfg["k"],
    "params": model_lib.param_count(mc),
    "non_embedding_params": model_lib.non_embedding_params(mc),
    "layer_change": common.layer_change(base_model, model),
    "metrics": metrics,
  }
