"""Emulated fine-tuning runs: base N1's distribution plus the behaviour delta of N2's fine-tune.

Each (N1, N2, D_f, beta) of a study's `eft` group is a run that depends on the base N1, the base N2
and the fine-tune of N2, each trained here or imported (model.checkpoints and their finetunes);
it trains nothing. It scores the task's test split
with the EFT distribution `log p_base(N1) + beta * (log p_ft(N2) - log p_base(N2))`, renormalised,
through the same metrics as a fine-tuned run: test loss, knowledge and behaviour.
"""

from __future__ import annotations

import json
import math

import jax
import ml_collections

from scaling import context as context_lib
from scaling import decode, grid, results, sources
from scaling import eft as eft_lib
from scaling import model as model_lib
from scaling import study_fields as fields
from scaling.kinds import finetune

GROUP = "eft"


def group_defaults() -> dict:
  """The `eft` group. Empty or unset fields are filled in by `resolve_group`: pairs -> every ordered
  (N1, N2) pair of the bases (model.sizes and model.checkpoints) whose N2 has fine-tunes of the
  chosen cell; d_f -> the smallest and largest D_f that every N2 has; task, method, seed -> the first
  of finetune's; pretrain_steps -> the largest pretraining budget. The bases are those of the first
  pretraining seed. A disabled group is not checked."""
  return {
    "enabled": False,
    "task": "",
    "method": "",
    "d_f": (),
    "seed": -1,
    "pretrain_steps": 0,
    "betas": (0.5, 1.0, 1.5),
    "pairs": (),
  }


def resolve_group(study: ml_collections.ConfigDict) -> None:
  """Checks an enabled `eft` group against what the study fine-tunes and fills in its defaults."""
  e = study.eft
  if not e.enabled:
    return
  tuned = fields.resolve_finetune_choice(study, "eft")
  e.pretrain_steps = fields.one_of(
    "eft.pretrain_steps",
    e.pretrain_steps,
    study.pretrain.steps,
    "a pretraining budget of this study",
    max(study.pretrain.steps),
    0,
  )
  betas = list(e.betas)
  if not betas or any(isinstance(b, bool) or not isinstance(b, (int, float)) or not math.isfinite(b) for b in betas):
    raise fields.StudyError(
      f"eft.betas={betas}; allowed: a non-empty list of finite numbers (1.0 is plain EFT, 0.0 the base N1 alone)"
    )
  e.betas = tuple(float(b) for b in betas)
  fields.each_once("eft.betas", e.betas)
  names = fields.bases(study)
  for i, pair in enumerate(e.pairs):
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
      raise fields.StudyError(f"eft.pairs[{i}]={pair!r}; allowed: a pair (N1, N2) of the study's bases")
    for name in pair:
      if name not in names:
        raise fields.StudyError(
          f"eft.pairs[{i}]={tuple(pair)!r}: {name!r} is not a base of this study; allowed: {list(names)}"
        )
  # By default every ordered pair whose N2 has fine-tunes of the chosen cell.
  e.pairs = tuple(tuple(p) for p in e.pairs) or tuple((n1, n2) for n1 in names for n2 in names if tuned[n2])
  fields.each_once("eft.pairs", e.pairs)
  cell = f"task {e.task!r}, method {e.method!r}, seed {e.seed}"
  for i, (n1, n2) in enumerate(e.pairs):
    if not tuned[n2]:
      raise fields.StudyError(
        f"eft.pairs[{i}]=({n1!r}, {n2!r}): {n2!r} has no fine-tune of {cell}; allowed: pairs whose "
        f"N2 has one: {sorted(b for b, d_fs in tuned.items() if d_fs)}"
      )
  e.d_f = fields.d_f_subset("eft.d_f", e.d_f, sorted(set().union(*tuned.values())))
  if not e.d_f:  # The smallest and largest D_f that every N2 has.
    common = sorted(set.intersection(*(tuned[n2] for _, n2 in e.pairs)))
    if not common:
      raise fields.StudyError(
        f"eft.d_f=(): the N2 of eft.pairs have no D_f in common ({cell}); allowed: eft.d_f, or pairs whose N2 share one"
      )
    e.d_f = tuple(dict.fromkeys((common[0], common[-1])))
  for i, (n1, n2) in enumerate(e.pairs):
    missing = [d for d in e.d_f if d not in tuned[n2]]
    if missing:
      raise fields.StudyError(
        f"eft.pairs[{i}]=({n1!r}, {n2!r}): {n2!r} has no fine-tune at D_f={missing[0]} of {cell}; "
        f"allowed: pairs whose N2 has one (its D_f: {sorted(tuned[n2])}), or eft.d_f that every N2 has"
      )
    fields.check_mixture(
      study,
      f"eft.pairs[{i}]=({n1!r}, {n2!r})",
      [(n1, None), *((n2, (e.task, e.method, d_f, e.seed)) for d_f in e.d_f), (n2, None)],
    )


def cells(study: ml_collections.ConfigDict, prior: list[grid.Run], execution: dict) -> list[grid.Run]:
  """One run per (N1, N2) pair, D_f and beta of the (validated, resolved) `eft` group."""
  e = study.eft
  if not e.enabled:
    return []
  seed = study.pretrain.seeds[0]  # Of several pretraining seeds, the bases of the first.
  bases = {
    r.config["size"]: r
    for r in prior  # Imported, or pretrained here to the group's budget.
    if r.kind == "checkpoint"
    or (r.kind == "pretrain" and r.config["train"]["max_steps"] == e.pretrain_steps and r.config["seed"] == seed)
  }
  finetuned = finetune.of_cell(prior, e.task, e.method, e.seed)
  world = fields.world_config(study).spec()
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
          **fields.data_fields(study, e.task, (n1, n2)),
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
