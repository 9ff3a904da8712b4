"""Study -> runs. A run's id is derived from its spec, so re-running a grid finds what is done."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import ml_collections

from scaling import study as study_lib

SPEC_FORMAT = 1  # Bump when the meaning of a spec changes, so that old results are not reused.


@dataclasses.dataclass(frozen=True)
class Run:
  """One unit of work: what it is (`config`, hashed into `id`), what it needs, where it runs."""

  id: str
  kind: str  # "pretrain" or "finetune".
  config: dict
  deps: tuple[str, ...]
  execution: dict  # Mesh and evaluation batching: how the run executes, not what it computes.

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
  """All runs of a resolved study, each after the runs it depends on."""
  execution = json.loads(json.dumps({"mesh_shape": study.mesh.shape.to_dict(), "rules": study.mesh.rules,
                                     "eval_batch_size": study.eval.batch_size}))  # As spec.json holds it.
  world = study_lib.world_config(study)
  runs: list[Run] = []
  for size in study.model.sizes:
    block = study.model.block.to_dict()
    for steps in study.pretrain.steps:
      train = dataclasses.asdict(study_lib.train_config(study.pretrain.train, "pretrain.train", max_steps=steps))
      pre = {"kind": "pretrain", "world": dataclasses.asdict(world), "size": size, "block": block,
             "seed": study.pretrain.seed, "train": train}
      base = Run(run_id(f"pt-{size}-{steps}", pre), "pretrain", pre, (), execution)
      runs.append(base)
      ft_train = dataclasses.asdict(study_lib.train_config(study.finetune.train, "finetune.train"))
      for task in study.finetune.tasks:
        for method in study.finetune.methods:
          for d_f in study.finetune.d_f:
            for seed in study.finetune.seeds:
              ft = {"kind": "finetune", "world": dataclasses.asdict(world), "size": size, "block": block,
                    "base": base.id, "task": task, "method": {"name": method}, "d_f": d_f, "seed": seed,
                    "train": ft_train}
              label = f"ft-{size}-{task}-{method}-df{d_f}-s{seed}"
              runs.append(Run(run_id(label, ft), "finetune", ft, (base.id,), execution))
  return runs
