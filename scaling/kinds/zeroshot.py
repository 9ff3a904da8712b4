"""Zero-shot runs: each base, before any fine-tuning, scored on each task's test split.

The point at D_f = 0 of every fine-tuning curve: test loss, knowledge and behaviour of the base
(trained here or imported) prompted with the task's format, through the same metrics as a fine-tuned
run. It says what a base can be asked before it is tuned: a base that stores facts but cannot be
asked for them in the task's format (knowledge near 0) starts its fine-tunes from behind, and as
EFT's N1 it cannot carry another size's delta. It trains nothing.
"""

from __future__ import annotations

import ml_collections

from scaling import context as context_lib
from scaling import decode, grid, sources
from scaling import model as model_lib
from scaling import study_fields as fields

GROUP = "zeroshot"


def group_defaults() -> dict:
  """The `zeroshot` group: `enabled` adds a zero-shot run per base and task."""
  return {"enabled": False}


def cells(study: ml_collections.ConfigDict, prior: list[grid.Run], execution: dict) -> list[grid.Run]:
  """One run per (base, task) of the study's fine-tunes, after its base."""
  if not study.zeroshot.enabled:
    return []
  world = fields.world_config(study).spec()
  runs = []
  for base in (r for r in prior if r.kind in grid.BASE_KINDS):
    size = base.config["size"]
    for task in map(sources.task_name, study.finetune.tasks):
      spec = {
        "kind": "zeroshot",
        "world": world,
        "size": size,
        "block": base.config["block"],
        "base": base.id,
        "task": task,
        **fields.data_fields(study, task, (size,)),
      }
      label = f"zs-{size}{grid.pretrain_seed_tag(base.config['seed'])}-{task}"
      runs.append(grid.Run(grid.run_id(label, spec), "zeroshot", spec, (base.id,), execution))
  return runs


def execute(ctx: context_lib.Context) -> dict:
  """Scores the task with the base alone; returns the result record's fields."""
  cfg = ctx.run.config
  mixture = decode.Mixture.of([context_lib.load_run_model(ctx, cfg["base"])], [1.0])
  model_cfg = ctx.model_config(cfg["size"])
  return {
    "size": cfg["size"],
    "task": cfg["task"],
    "d_f": 0,
    "base": cfg["base"],
    "params": model_lib.param_count(model_cfg),
    "non_embedding_params": model_lib.non_embedding_params(model_cfg),
    "metrics": context_lib.task_metrics(ctx, mixture, sources.task_of(cfg)),
  }
