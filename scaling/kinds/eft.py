"""Emulated fine-tuning runs: base N1's distribution plus the behaviour delta of N2's fine-tune.

Each (N1, N2, D_f, beta) of a study's `eft` group is a run that depends on the base N1, the base N2
and the fine-tune of N2, each trained here or imported (model.checkpoints and their finetunes);
it trains nothing. It scores the task's test split
with the EFT distribution `log p_base(N1) + beta * (log p_ft(N2) - log p_base(N2))`, renormalised,
through the same metrics as a fine-tuned run: test loss, knowledge and behaviour.
"""

from __future__ import annotations

import dataclasses
import json

import jax
import ml_collections

from scaling import context as context_lib
from scaling import decode, grid, results, sources
from scaling import eft as eft_lib
from scaling import model as model_lib
from scaling import study as study_lib
from scaling.kinds import finetune


def cells(study: ml_collections.ConfigDict, prior: list[grid.Run], execution: dict) -> list[grid.Run]:
  """One run per (N1, N2) pair, D_f and beta of the (validated, resolved) `eft` group."""
  e = study.eft
  if not e.enabled:
    return []
  bases = {
    r.config["size"]: r
    for r in prior  # Imported, or pretrained here to the group's budget.
    if r.kind == "checkpoint" or (r.kind == "pretrain" and r.config["train"]["max_steps"] == e.pretrain_steps)
  }
  finetuned = finetune.of_cell(prior, e.task, e.method, e.seed)
  world = dataclasses.asdict(study_lib.world_config(study))
  runs = []
  for n1, n2 in e.pairs:
    base_n1, base_n2 = bases[n1], bases[n2]
    for d_f in e.d_f:
      ft_n2 = finetuned[(base_n2.id, d_f)]
      for beta in e.betas:
        spec = {
          "kind": "eft",
          "world": world,
          "size": n1,
          "finetune_size": n2,
          "block": base_n1.config["block"],
          "base": base_n1.id,
          "finetune_base": base_n2.id,
          "finetuned": ft_n2.id,
          "task": e.task,
          "method": e.method,
          "d_f": d_f,
          "seed": e.seed,
          "beta": float(beta),
          **study_lib.data_fields(study, e.task, (n1, n2)),
        }
        label = f"eft-{n1}-{n2}-{e.task}-{e.method}-df{d_f}-b{beta:g}-s{e.seed}"
        deps = tuple(dict.fromkeys((base_n1.id, base_n2.id, ft_n2.id)))
        runs.append(grid.Run(grid.run_id(label, spec), "eft", spec, deps, execution))
  return runs


def execute(ctx: context_lib.Context) -> dict:
  """Scores the task with the EFT combination; returns the result record's fields."""
  cfg = ctx.run.config
  loaded: dict[str, decode.Model] = {}
  for run_id in (cfg["base"], cfg["finetuned"], cfg["finetune_base"]):  # eft.TERMS order.
    if run_id not in loaded:
      loaded[run_id] = context_lib.load_run_model(ctx, run_id)
  models = [loaded[cfg[k]] for k in ("base", "finetuned", "finetune_base")]
  mixture = decode.Mixture.of(models, eft_lib.weights(cfg["beta"]))
  # A re-run starts its progress record afresh (appended to on gs:// too, where gcsfs cannot append).
  progress = results.appending(ctx.run_dir / "metrics.jsonl", "") if jax.process_index() == 0 else None

  def log(metrics: dict) -> None:
    if progress is not None:
      progress.write((json.dumps(metrics, sort_keys=True) + "\n").encode())
      progress.flush()

  metrics = context_lib.task_metrics(ctx, mixture, sources.task_of(cfg), log)
  n1, n2 = ctx.model_config(cfg["size"]), ctx.model_config(cfg["finetune_size"])
  return {
    "size": cfg["size"],
    "finetune_size": cfg["finetune_size"],
    "beta": cfg["beta"],
    "task": cfg["task"],
    "method": cfg["method"],
    "d_f": cfg["d_f"],
    "seed": cfg["seed"],
    "base": cfg["base"],
    "finetuned": cfg["finetuned"],
    "params": model_lib.param_count(n1),
    "non_embedding_params": model_lib.non_embedding_params(n1),
    "finetune_non_embedding_params": model_lib.non_embedding_params(n2),
    "metrics": metrics,
  }
