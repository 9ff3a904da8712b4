"""Study -> runs. A run's id is derived from its spec, so re-running a grid finds what is done.

Each run kind (scaling.kinds) adds its cells, in dependency order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import ml_collections

SPEC_FORMAT = 1  # Bump when the meaning of a spec changes, so that old results are not reused.
# Kinds whose runs are base models (trained here or imported) that the other kinds build on.
BASE_KINDS = ("pretrain", "checkpoint")
# Kinds whose runs are fine-tunes of a base (trained here or imported).
FINETUNE_KINDS = ("finetune", "finetune_checkpoint")


@dataclasses.dataclass(frozen=True)
class Run:
  """One unit of work: what it is (`config`, hashed into `id`), what it needs, where it runs."""

  id: str
  kind: str  # A name in scaling.kinds.KINDS.
  config: dict
  deps: tuple[str, ...]
  # Mesh, evaluation batching, metric writers: how the run executes, not what it computes (older
  # specs may lack later keys).
  execution: dict

  def to_json(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, d: dict) -> "Run":
    return cls(id=d["id"], kind=d["kind"], config=d["config"], deps=tuple(d["deps"]), execution=d["execution"])


def run_id(label: str, config: dict) -> str:
  """`label-hash`: the hash of the canonical JSON of the spec; stable across processes."""
  blob = json.dumps({"format": SPEC_FORMAT, **config}, sort_keys=True, separators=(",", ":"))
  return f"{label}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


def expand(study: ml_collections.ConfigDict) -> list[Run]:
  """All runs of a validated study, each after the runs it depends on."""
  from scaling import kinds  # The kinds build Runs: imported here, not at the top, to avoid a cycle.

  logging = {**study.logging.to_dict(), "wandb_group": study.name}  # W&B groups a study's runs.
  execution = json.loads(json.dumps({"mesh_shape": study.mesh.shape.to_dict(), "rules": study.mesh.rules,
                                     "eval_batch_size": study.eval.batch_size,
                                     "pack": study.finetune.pack,
                                     "loss_chunk": study.memory.loss_chunk,
                                     "logging": logging}))  # As spec.json holds it.
  runs: list[Run] = []
  for kind in kinds.KINDS.values():
    runs += kind.cells(study, list(runs), execution)
  return runs
