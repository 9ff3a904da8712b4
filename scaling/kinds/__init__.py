"""Run kinds as plug-ins: the one table that names them.

A kind is a module with `cells(study, prior, execution)`, which adds its runs (with their
dependencies among `prior`, the runs of the kinds before it) to a study's grid, and
`execute(ctx)`, which runs one spec of that kind and returns its result record's fields. A kind
whose runs can train together also has `pack_key(run)` (runs with equal keys may share a program)
and `execute_pack(ctxs)` (their records' fields, in order); see `scaling.run.packs`. Adding a
kind is adding one module and one entry here; `scaling.grid`, `scaling.run` and the launchers do
not change.
"""

from __future__ import annotations

from types import ModuleType

from scaling.kinds import checkpoint, eft, finetune, finetune_checkpoint, pretrain, transplant

# In dependency order: a kind's runs may depend on the runs of the kinds before it.
KINDS: dict[str, ModuleType] = {"pretrain": pretrain, "checkpoint": checkpoint,
                                "finetune_checkpoint": finetune_checkpoint, "finetune": finetune, "eft": eft,
                                "transplant": transplant}


def get(kind: str) -> ModuleType:
  """The plug-in of a run kind; errors list the kinds there are."""
  if kind not in KINDS:
    raise ValueError(f"unknown run kind {kind!r}; allowed: {sorted(KINDS)}")
  return KINDS[kind]
