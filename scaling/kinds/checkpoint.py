"""Imported bases: each checkpoint of `model.checkpoints`, a Hugging Face model folder, as a base
that the study fine-tunes; nothing is trained.

Its run id hashes the folder's content identity (scaling.hf.content_id), so a changed checkpoint is
a new run, and so are the runs built on it. The run reads the weights, sharded, and measures the
base on the pretraining corpus's held-out split, as a pretraining run does, for the forgetting
analysis; fine-tunes read the folder again, each device its slice.
"""

from __future__ import annotations

import ml_collections

from scaling import context as context_lib
from scaling import decode, grid
from scaling import model as model_lib
from scaling import study_fields as fields


def cells(study: ml_collections.ConfigDict, prior: list[grid.Run], execution: dict) -> list[grid.Run]:
  """One run per checkpoint."""
  del prior
  world = fields.world_config(study).spec()
  runs = []
  for entry in study.model.checkpoints:
    name = entry["name"]
    spec = {
      "kind": "checkpoint",
      "world": world,
      "size": name,
      "block": study.model.block.to_dict(),
      "seed": 0,
      "pretrain_tokens": entry.get("pretrain_tokens"),
      **fields.data_fields(study, sizes=(name,)),
    }
    runs.append(grid.Run(grid.run_id(f"ck-{name}", spec), "checkpoint", spec, (), execution))
  return runs


def execute(ctx: context_lib.Context) -> dict:
  """Imports the checkpoint and measures it; returns its result record's fields."""
  cfg, mc = ctx.run.config, ctx.model_cfg
  model = context_lib.build_model(ctx, cfg["size"], None, cfg["seed"])
  mixture = decode.Mixture.single(model.graphdef, model.params, model.frozen)
  return {
    "size": cfg["size"],
    "base": None,
    "task": None,
    "method": None,
    "d_f": None,
    "seed": cfg["seed"],
    "params": model_lib.param_count(mc),
    "non_embedding_params": model_lib.non_embedding_params(mc),
    "trainable_params": 0,
    "pretrain_tokens": cfg["pretrain_tokens"],
    "checkpoint": ctx.checkpoint(cfg["size"]),
    "metrics": context_lib.retention_metrics(ctx, mixture),
  }
