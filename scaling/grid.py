"""A study's runs: what a run is, and its id, derived from its spec, so that re-running a grid finds
what is done. The run kinds (scaling.kinds) make a study's runs (`kinds.expand`)."""

from __future__ import annotations

import dataclasses
import hashlib
import json

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
