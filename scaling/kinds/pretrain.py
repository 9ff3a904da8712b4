"""Pretraining: a base model of each size and budget, trained on the world's biographies."""

from __future__ import annotations

import dataclasses

import ml_collections

from scaling import context as context_lib
from scaling import decode, grid, train
from scaling import model as model_lib
from scaling import study_fields as fields
from scaling.data import pipeline


def cells(study: ml_collections.ConfigDict, prior: list[grid.Run], execution: dict) -> list[grid.Run]:
  """One pretraining run per (size, steps, seed)."""
  del prior
  world = fields.world_config(study).pretraining_spec()
  runs = []
  for size in study.model.sizes:
    for steps in study.pretrain.steps:
      tcfg = fields.train_config(study.pretrain.train, "pretrain.train", max_steps=steps)
      for seed in study.pretrain.seeds:
        spec = {
          "kind": "pretrain",
          "world": world,
          "size": size,
          "block": study.model.block.to_dict(),
          "seed": seed,
          "train": dataclasses.asdict(tcfg),
          **fields.data_fields(study),
        }
        label = f"pt-{size}-{steps}{grid.pretrain_seed_tag(seed)}"
        runs.append(grid.Run(grid.run_id(label, spec), "pretrain", spec, (), execution))
  return runs


def execute(ctx: context_lib.Context) -> dict:
  """Trains a base model on biographies; returns its result record's fields."""
  cfg = ctx.run.config
  tcfg = train.TrainConfig(**cfg["train"])
  model = context_lib.build_model(ctx, cfg["size"], None, cfg["seed"])
  batches = pipeline.train_batches(
    ctx.sources.corpus("train"),
    pipeline.Encoder(ctx.tok, tcfg.seq_len, truncate=True),
    tcfg.batch_size,
    seed=cfg["seed"],
  )
  outcome = train.run(
    graphdef=model.graphdef,
    params=model.params,
    frozen=model.frozen,
    batches=batches,
    cfg=tcfg,
    run_dir=str(ctx.run_dir),
    mesh=ctx.mesh,
    rules=ctx.rules,
    description=ctx.run.id,
    loss_chunk=ctx.loss_chunk,
  )
  train.save_params(outcome.params, str(ctx.run_dir / "model"))
  mixture = decode.Mixture.single(model.graphdef, outcome.params, model.frozen)
  return context_lib.trained_record(
    ctx,
    outcome,
    context_lib.retention_metrics(ctx, mixture),
    trainable_params=model_lib.param_count(ctx.model_cfg),
    pretrain_tokens=outcome.tokens_seen,
  )
