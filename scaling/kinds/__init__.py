"""Run kinds as plug-ins: the one table that names them.

A kind is a module with `cells(study, prior, execution)`, which adds its runs (with their
dependencies among `prior`, the runs of the kinds before it) to a study's grid, and
`execute(ctx)`, which runs one spec of that kind and returns its result record's fields. A kind
whose runs can train together also has `pack_key(run)` (runs with equal keys may share a program)
and `execute_pack(ctxs)` (their records' fields, in order); see `scaling.run.packs`. A kind with a study
group of its own (eft, transplant, zeroshot) has `GROUP` (the group's name), `group_defaults()` (its fields and
defaults, which `scaling.study.defaults` takes in) and `resolve_group(study)` (its checks and filled-in
defaults, which `scaling.study.validate` calls); the helpers they share are in `scaling.study_fields`. Adding a
kind is adding one module and one entry here; `scaling.grid`, `scaling.run` and the launchers do
not change. `expand` makes a study's runs: each kind's cells, in the table's order.
"""

from __future__ import annotations

import json
from types import ModuleType

import ml_collections
from etils import epath

from scaling import grid
from scaling.kinds import checkpoint, eft, finetune, finetune_checkpoint, pretrain, transplant, zeroshot

# In dependency order: a kind's runs may depend on the runs of the kinds before it.
KINDS: dict[str, ModuleType] = {
  "pretrain": pretrain,
  "checkpoint": checkpoint,
  "finetune_checkpoint": finetune_checkpoint,
  "finetune": finetune,
  "zeroshot": zeroshot,
  "eft": eft,
  "transplant": transplant,
}


def get(kind: str) -> ModuleType:
  """The plug-in of a run kind; errors list the kinds there are."""
  if kind not in KINDS:
    raise ValueError(f"unknown run kind {kind!r}; allowed: {sorted(KINDS)}")
  return KINDS[kind]


def expand(study: ml_collections.ConfigDict) -> list[grid.Run]:
  """All runs of a validated study (only those `only` names and what they need, where it names some), each after
  the runs it depends on."""
  logging = {**study.logging.to_dict(), "wandb_group": study.name}  # W&B groups a study's runs.
  execution = json.loads(
    json.dumps(
      {
        "mesh_shape": study.mesh.shape.to_dict(),
        "rules": study.mesh.rules,
        "eval_batch_size": study.eval.batch_size,
        "pack": study.finetune.pack,
        "loss_chunk": study.memory.loss_chunk,
        "logging": logging,
      }
    )
  )  # As spec.json holds it.
  runs: list[grid.Run] = []
  for kind in KINDS.values():
    runs += kind.cells(study, list(runs), execution)
  return grid.select(runs, study.only) if study.only else runs


def of_workdir(workdir: epath.Path) -> list[grid.Run] | None:
  """Every run of the study last planned in a workdir (its study.json, whatever `only` it ran with); None
  without a study.json."""
  path = workdir / "study.json"
  if not path.exists():
    return None
  study = ml_collections.ConfigDict(json.loads(path.read_text()))
  study.only = ()
  return expand(study)


def planned_ids(workdir: epath.Path) -> set[str] | None:
  """The ids of the runs of the study last planned in a workdir; None without a study.json, or with one that
  this code cannot expand (written by an older version: it says so)."""
  try:
    runs = of_workdir(workdir)
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    print(f"{workdir}/study.json does not expand here ({e!r}): every finished run counts", flush=True)
    return None
  return None if runs is None else {r.id for r in runs}
