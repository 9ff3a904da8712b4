"""Fine-tuning: each base, with each method, on nested subsets of each task (D_f examples)."""

from __future__ import annotations

import dataclasses

import jax
import ml_collections

from scaling import context as context_lib
from scaling import decode, grid, methods, sources, train
from scaling import study as study_lib
from scaling.data import pipeline
from scaling.methods import common


def cells(study: ml_collections.ConfigDict, prior: list[grid.Run], execution: dict) -> list[grid.Run]:
  """One run per (base, task, method, D_f, seed), after its base."""
  world = dataclasses.asdict(study_lib.world_config(study))
  train_cfg = dataclasses.asdict(study_lib.train_config(study.finetune.train, "finetune.train"))
  runs = []
  for base in (r for r in prior if r.kind in grid.BASE_KINDS):
    size = base.config["size"]
    for task in map(sources.task_name, study.finetune.tasks):
      for method in study_lib.method_specs(study):
        for d_f in study.finetune.d_f:
          for seed in study.finetune.seeds:
            spec = {"kind": "finetune", "world": world, "size": size, "block": base.config["block"],
                    "base": base.id, "task": task, "method": method, "d_f": d_f, "seed": seed,
                    "train": train_cfg, **study_lib.data_fields(study, task, (size,))}
            label = f"ft-{size}-{task}-{methods.label(method)}-df{d_f}-s{seed}"
            runs.append(grid.Run(grid.run_id(label, spec), "finetune", spec, (base.id,), execution))
  return runs


def execute(ctx: context_lib.Context) -> dict:
  """Fine-tunes a base with a method on D_f examples; evaluates it at its best dev step."""
  cfg = ctx.run.config
  tcfg = train.TrainConfig(**{**cfg["train"], **methods.training_overrides(cfg["method"])})
  task = sources.task_of(cfg)
  base = ctx.dependency(cfg["base"])
  model = context_lib.build_model(ctx, cfg["size"], context_lib.method_of(cfg), cfg["seed"],
                                  context_lib.base_dir(ctx, cfg["base"]))
  trainable = sum(x.size for x in jax.tree.leaves(model.params))
  batches = pipeline.train_batches(ctx.sources.task(task, "train"),
                                   pipeline.Encoder(ctx.tok, tcfg.seq_len, truncate=not sources.is_world_task(task)),
                                   tcfg.batch_size, seed=cfg["seed"], subset=cfg["d_f"], subset_seed=cfg["seed"])
  outcome = train.run(graphdef=model.graphdef, params=model.params, frozen=model.frozen, batches=batches,
                      cfg=tcfg, run_dir=str(ctx.run_dir), mesh=ctx.mesh, rules=ctx.rules,
                      dev_batches=ctx.eval_batches(ctx.sources.task(task, "dev")), description=ctx.run.id)
  train.save_params(outcome.params, str(ctx.run_dir / "model"))
  mixture = decode.Mixture.single(model.graphdef, outcome.params, model.frozen)
  metrics = context_lib.task_metrics(ctx, mixture, task)
  metrics.update(context_lib.retention_against(ctx, mixture, base["metrics"]))
  record = context_lib.trained_record(ctx, outcome, metrics, trainable_params=trainable,
                                      pretrain_tokens=base["pretrain_tokens"], base=cfg["base"], task=cfg["task"],
                                      method=methods.label(cfg["method"]), d_f=cfg["d_f"])
  record["train"]["learning_rate"] = tcfg.learning_rate  # The study's, or the method's own.
  # How far each block's weights moved from the base's, for the layer-locality analysis.
  record["layer_change"] = common.layer_change(context_lib.load_run_model(ctx, cfg["base"]).module(),
                                               mixture.modules()[0])
  return record
