"""Layer transplants: a full fine-tune with its lower (or upper) k blocks reset to its base's.

For each base of the largest pretraining budget (and each imported base), each D_f of the `transplant` group and each k
from 1 to the base's layers - 1, a run takes the full fine-tune's weights, puts the base's back
into blocks 0..k-1 (part "lower") or into the last k blocks ("upper"), and measures what is left:
test loss, knowledge and behaviour on the task, and retention against the base. If fine-tuning
acts on the upper layers, resetting them undoes the behaviour and keeps the knowledge. It trains
nothing.
"""

from __future__ import annotations

import ml_collections
from flax import nnx

from scaling import context as context_lib
from scaling import decode, grid, methods, sources
from scaling import model as model_lib
from scaling import study_fields as fields
from scaling.kinds import finetune
from scaling.methods import common

GROUP = "transplant"


def group_defaults() -> dict:
  """The `transplant` group: a full fine-tune with its lower or upper k blocks reset to the base's, for
  every k from 1 to layers - 1. Unset fields, as for eft: task, method (a full-tuning label, or an
  imported fine-tune's) and seed -> the first of finetune's; d_f -> the largest D_f of the method's
  fine-tunes."""
  return {"enabled": False, "task": "", "method": "", "d_f": (), "seed": -1, "parts": ("lower", "upper")}


def resolve_group(study: ml_collections.ConfigDict) -> None:
  """Checks an enabled `transplant` group: whole fine-tunes only (it resets blocks of the fine-tuned
  weights), those trained here by full tuning of every layer or imported."""
  t = study.transplant
  if not t.enabled:
    return
  full = {
    methods.label(spec) for spec in fields.method_specs(study) if spec["name"] == "full" and spec["layers"] is None
  }
  imported = {ft["method"] for c in study.model.checkpoints for ft in c["finetunes"]}
  if not full | imported:
    raise fields.StudyError(
      "transplant.enabled needs full tuning of every layer in finetune.methods, or imported "
      "fine-tunes; allowed: add 'full' to finetune.methods, or transplant.enabled=False"
    )
  tuned = fields.resolve_finetune_choice(study, "transplant", lambda label: label in full | imported)
  t.d_f = fields.d_f_subset("transplant.d_f", t.d_f, sorted(set().union(*tuned.values()))) or (
    max(set().union(*tuned.values())),
  )
  parts = tuple(t.parts)
  if not parts or any(p not in ("lower", "upper") for p in parts):
    raise fields.StudyError(f"transplant.parts={parts!r}; allowed: a non-empty subset of ('lower', 'upper')")
  fields.each_once("transplant.parts", parts)
  t.parts = parts
  for name, d_fs in tuned.items():
    cells = [(name, (t.task, t.method, d_f, t.seed)) for d_f in t.d_f if d_f in d_fs]
    if cells:
      fields.check_mixture(study, f"transplant of {name!r}", [(name, None), *cells])


def cells(study: ml_collections.ConfigDict, prior: list[grid.Run], execution: dict) -> list[grid.Run]:
  """One run per (base, D_f, part, k) of the (validated, resolved) `transplant` group."""
  t = study.transplant
  if not t.enabled:
    return []
  budget = max(study.pretrain.steps)
  finetuned = finetune.of_cell(prior, t.task, t.method, t.seed)
  world = fields.world_config(study).spec()
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
            **fields.data_fields(study, t.task, (size,)),
          }
          label = (
            f"tp-{size}{grid.pretrain_seed_tag(base.config['seed'])}-{t.task}-{t.method}-df{d_f}-{part}{k}-s{t.seed}"
          )
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
