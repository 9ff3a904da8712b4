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


def pretrain_seed_tag(seed: int) -> str:
  """What a base's pretraining seed adds to the labels of its runs: nothing for seed 0, so that the
  runs of a study's seed 0 keep the ids that a study of one seed gives them."""
  return f"-p{seed}" if seed else ""


def run_label(run_id: str) -> str:
  """A run id without its spec hash: `pt-d16l2-1200-0123456789` -> `pt-d16l2-1200`."""
  return run_id.rsplit("-", 1)[0]


def select(runs: list[Run], labels: tuple[str, ...] | list[str]) -> list[Run]:
  """The runs with these labels (`run_label`) and every run they depend on, in their order; ValueError names a
  label that no run has."""
  by_label = {run_label(r.id): r for r in runs}
  unknown = [label for label in labels if label not in by_label]
  if unknown:
    raise ValueError(
      f"only={list(labels)}: {unknown[0]!r} is not a run of this study; allowed: labels of its {len(runs)} runs, "
      f"such as {list(by_label)[-1]!r}"
    )
  by_id, keep = {r.id: r for r in runs}, set()
  todo = [by_label[label].id for label in labels]
  while todo:
    run_id = todo.pop()
    if run_id not in keep:
      keep.add(run_id)
      todo += by_id[run_id].deps
  return [r for r in runs if r.id in keep]
