"""Imported fine-tunes: each fine-tune named in a checkpoint's `finetunes` (a Hugging Face model
folder: an instruct or chat checkpoint, or a fine-tune exported from another study) as a fine-tune
of that base; nothing is trained.

Its run id hashes the folder's content identity, as an imported base's does. The run measures the
fine-tune as a trained one is measured (the task's metrics, retention against its base, how far
each block moved), so analyses and EFT take it where they take a fine-tune; where its base, task,
method label, D_f and seed are a cell of the fine-tuning grid, the grid does not train that cell.
"""

from __future__ import annotations

import ml_collections

from scaling import context as context_lib
from scaling import decode, grid, hf, sources
from scaling import model as model_lib
from scaling import study_fields as fields
from scaling.methods import common


def cells(study: ml_collections.ConfigDict, prior: list[grid.Run], execution: dict) -> list[grid.Run]:
  """One run per imported fine-tune, after its base."""
  bases = {r.config["size"]: r for r in prior if r.kind == "checkpoint"}
  world = fields.world_config(study).spec()
  runs = []
  for entry in study.model.checkpoints:
    name, base = entry["name"], bases[entry["name"]]
    for ft in entry.get("finetunes", ()):
      spec = {
        "kind": "finetune_checkpoint",
        "world": world,
        "size": name,
        "block": base.config["block"],
        "base": base.id,
        "task": ft["task"],
        "method": ft["method"],
        "d_f": ft["d_f"],
        "seed": ft["seed"],
        "imported": {"path": ft["path"], "content": hf.content_id(ft["path"])},
        **fields.data_fields(study, ft["task"], (name,)),
      }
      label = f"ift-{name}-{ft['task']}-{ft['method']}-df{ft['d_f']}-s{ft['seed']}"
      runs.append(grid.Run(grid.run_id(label, spec), "finetune_checkpoint", spec, (base.id,), execution))
  return runs


def execute(ctx: context_lib.Context) -> dict:
  """Imports the fine-tune and measures it against its base; returns its result record's fields."""
  cfg, mc = ctx.run.config, ctx.model_cfg
  model = context_lib.build_model(ctx, cfg["size"], None, cfg["seed"], folder=cfg["imported"]["path"])
  mixture = decode.Mixture.single(model.graphdef, model.params, model.frozen)
  base = ctx.dependency(cfg["base"])
  metrics = context_lib.task_metrics(ctx, mixture, sources.task_of(cfg))
  metrics.update(context_lib.retention_against(ctx, mixture, base["metrics"]))
  return {
    "size": cfg["size"],
    "base": cfg["base"],
    "task": cfg["task"],
    "method": cfg["method"],
    "d_f": cfg["d_f"],
    "seed": cfg["seed"],
    "params": model_lib.param_count(mc),
    "non_embedding_params": model_lib.non_embedding_params(mc),
    "trainable_params": model_lib.param_count(mc),
    "pretrain_tokens": base["pretrain_tokens"],
    "checkpoint": cfg["imported"]["path"],
    "metrics": metrics,
    "layer_change": common.layer_change(context_lib.load_run_model(ctx, cfg["base"]).module(), model.module()),
  }
