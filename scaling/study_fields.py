"""What a study's groups share, below the schema that assembles them (scaling.study) and the run
kinds that own some of them (scaling.kinds): the error that names a field, the checks of values and
grid axes, the readers of a study's world, model, training, methods and data fields, the fine-tuning
cells (trained here or imported) that EFT and transplants choose from, and the check that the models
of a mixture share a tokenizer."""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
from collections.abc import Callable, Iterable

import ml_collections

from scaling import hf, methods, sources
from scaling import model as model_lib
from scaling.data import tokenizer as tokenizer_lib
from scaling.data import world as world_lib
from scaling.train_config import TrainConfig


class StudyError(ValueError):
  """A study config that cannot run; the message names the field, the value and what is allowed."""


def field_names(cls) -> set[str]:
  return {f.name for f in dataclasses.fields(cls)}


def is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def positive_ints(name: str, values: Iterable) -> None:
  values = list(values)
  if not values or any(not is_int(v) or v < 1 for v in values):
    raise StudyError(f"{name}={values}; allowed: a non-empty list of positive integers")
  each_once(name, values)


def each_once(name: str, values: Iterable) -> None:
  """A grid axis lists each value once: a repeat would make two runs of one id."""
  values = list(values)
  repeated = next((v for i, v in enumerate(values) if v in values[:i]), None)
  if repeated is not None:
    raise StudyError(f"{name}={values} lists {repeated!r} twice; allowed: each value once")


def train_config(group: ml_collections.ConfigDict, prefix: str, **overrides) -> TrainConfig:
  """The TrainConfig of `pretrain.train` or `finetune.train`."""
  unknown = set(group.keys()) - field_names(TrainConfig)
  if unknown:
    raise StudyError(
      f"{prefix}.{sorted(unknown)[0]} is not a training field; allowed: {sorted(field_names(TrainConfig))}"
    )
  cfg = TrainConfig(**{**group.to_dict(), **overrides})
  try:
    cfg.validate(prefix)
  except ValueError as e:
    raise StudyError(str(e)) from None
  return cfg


LADDER_FIELDS = {"vocab_size", "d_model", "n_layers", "n_heads"}


def model_config(study: ml_collections.ConfigDict, size: str, vocab_size: int) -> model_lib.ModelConfig:
  """The ModelConfig of one ladder size with the study's block options."""
  block = study.model.block.to_dict()
  # The ladder's name gives the width and depth, and the tokenizer the vocabulary.
  unknown = set(block) - (field_names(model_lib.ModelConfig) - LADDER_FIELDS)
  if unknown:
    raise StudyError(
      f"model.block.{sorted(unknown)[0]} is not a block option; "
      f"allowed: {sorted(field_names(model_lib.ModelConfig) - LADDER_FIELDS)}"
    )
  try:
    cfg = model_lib.ladder_config(size, vocab_size, **block)
    cfg.validate()
  except ValueError as e:
    raise StudyError(f"model.sizes: {e}") from None
  return cfg


def world_config(study: ml_collections.ConfigDict) -> world_lib.WorldConfig:
  unknown = set(study.world.keys()) - field_names(world_lib.WorldConfig)
  if unknown:
    raise StudyError(
      f"world.{sorted(unknown)[0]} is not a world field; allowed: {sorted(field_names(world_lib.WorldConfig))}"
    )
  cfg = world_lib.WorldConfig(**study.world.to_dict())
  try:
    cfg.validate()
  except ValueError as e:
    raise StudyError(str(e)) from None
  return cfg


def require_wandb(project: str) -> None:
  """Raises StudyError if W&B logging is on (a project is set) and wandb is not installed."""
  if project and importlib.util.find_spec("wandb") is None:
    raise StudyError(
      f"logging.wandb_project={project!r} needs Weights & Biases, which is not installed; allowed: "
      "'' (off), or install the extra scaling[wandb] (pip install 'scaling[wandb]')"
    )


def bases(study: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The names of a study's bases: its ladder sizes, then its checkpoints."""
  return tuple(study.model.sizes) + tuple(c["name"] for c in study.model.checkpoints)


def data_fields(study: ml_collections.ConfigDict, task: str | None = None, sizes: tuple[str, ...] = ()) -> dict:
  """The spec fields that say where a run's text and bases come from, where they are not the world
  and the ladder (so that the ids of world studies stay as they were): corpus, tokenizer, the
  TFDS task's source, and the checkpoints of `sizes` with their content identity."""
  out = {}
  corpus = study.data.corpus
  if corpus != "world":
    out["corpus"] = corpus.to_dict() if isinstance(corpus, ml_collections.ConfigDict) else corpus
  if study.data.tokenizer != "world":
    out["tokenizer"] = study.data.tokenizer
  for entry in study.finetune.tasks:
    entry = entry.to_dict() if isinstance(entry, ml_collections.ConfigDict) else entry
    if task is not None and not isinstance(entry, str) and sources.task_name(entry) == task:
      out["task_source"] = entry
  paths = {c["name"]: str(c["path"]) for c in study.model.checkpoints}
  used = {size: {"path": paths[size], "content": hf.content_id(paths[size])} for size in sizes if size in paths}
  if used:
    out["checkpoints"] = used
  return out


def method_specs(study: ml_collections.ConfigDict) -> list[dict]:
  """Every fine-tuning method of the study, each a spec with all its options (grid axes expanded)."""
  specs = []
  for i, entry in enumerate(study.finetune.methods):
    entry = entry.to_dict() if isinstance(entry, ml_collections.ConfigDict) else entry
    name = entry if isinstance(entry, str) else dict(entry).get("name")
    if name not in methods.METHODS:
      raise StudyError(
        f"finetune.methods[{i}]={entry!r} is not a fine-tuning method; "
        f"allowed: {sorted(methods.METHODS)}, or a dict of one and its options"
      )
    try:
      specs += methods.expand(entry)
    except (TypeError, ValueError) as e:
      raise StudyError(f"finetune.methods[{i}]: {e}") from None
  labels = [methods.label(spec) for spec in specs]
  repeated = sorted({x for x in labels if labels.count(x) > 1})
  if repeated:
    raise StudyError(f"finetune.methods lists {repeated[0]!r} twice; allowed: each method and options once")
  return specs


def fine_tuned(study: ml_collections.ConfigDict) -> dict[tuple, dict[str, set]]:
  """(task, method label, seed) -> base name -> the D_f of its fine-tunes, trained here or imported."""
  out: dict[tuple, dict[str, set]] = {}
  names = bases(study)
  for task in map(sources.task_name, study.finetune.tasks):
    for label in (methods.label(spec) for spec in method_specs(study)):
      for seed in study.finetune.seeds:
        out[(task, label, seed)] = {b: set(study.finetune.d_f) for b in names}
  for entry in study.model.checkpoints:
    for ft in entry["finetunes"]:
      key = (ft["task"], ft["method"], ft["seed"])
      out.setdefault(key, {b: set() for b in names})[entry["name"]].add(ft["d_f"])
  return out


def one_of(field: str, value, allowed, what: str, default, unset):
  """`value` if it is one of `allowed`, `default` if it is `unset`; else a StudyError naming `field`."""
  if value == unset:
    return default
  if value not in allowed:
    raise StudyError(f"{field}={value!r} is not {what}; allowed: {list(allowed)}")
  return value


def resolve_finetune_choice(
  study: ml_collections.ConfigDict, group: str, allowed: Callable[[str], bool] = lambda label: True
) -> dict[str, set]:
  """Fills in (or checks) a group's task, method and seed, one cell of the study's fine-tunes
  (trained here or imported) whose method label is `allowed`; returns base name -> its D_f there."""
  g, ft = study[group], study.finetune
  cells = {key: tuned for key, tuned in fine_tuned(study).items() if allowed(key[1])}
  names = [sources.task_name(t) for t in ft.tasks]
  labels = list(dict.fromkeys(label for _, label, _ in cells))
  seeds = list(dict.fromkeys(seed for _, _, seed in cells))
  g.task = one_of(f"{group}.task", g.task, names, "a task this study fine-tunes", names[0], "")
  g.method = one_of(f"{group}.method", g.method, labels, "a method this study fine-tunes with", labels[0], "")
  g.seed = one_of(f"{group}.seed", g.seed, seeds, "a fine-tuning seed of this study", seeds[0], -1)
  key = (g.task, g.method, g.seed)
  if key not in cells:
    raise StudyError(
      f"{group}: no fine-tunes of task {g.task!r}, method {g.method!r} and seed {g.seed}; allowed: "
      f"(task, method, seed) among {sorted(cells)}"
    )
  return cells[key]


def d_f_subset(field: str, values: Iterable, allowed: Iterable) -> tuple:
  """`values` after checking that each is one of the study's D_f."""
  for d_f in values:
    if d_f not in allowed:
      raise StudyError(f"{field} contains {d_f!r}, which this study does not fine-tune on; allowed: {list(allowed)}")
  each_once(field, values)
  return tuple(values)


def check_mixture(study: ml_collections.ConfigDict, where: str, models: list[tuple[str, tuple | None]]) -> None:
  """The models of a mixture, each (base name, its fine-tune's cell or None for the base), share one
  tokenizer, compared by content (their vocabularies may be padded to different widths: a mixture
  reads the narrowest)."""
  tokenizers = list(dict.fromkeys(_tokenizer_of(study, base, cell) for base, cell in models))
  for other in tokenizers[1:]:
    difference = _vocabulary_difference(study, tokenizers[0], other)
    if difference:
      raise StudyError(
        f"{where}: the models of a mixture must share a tokenizer, but {_named(tokenizers[0])} and "
        f"{_named(other)} differ ({difference}); allowed: models whose tokenizers are the same"
      )


def _tokenizer_of(study: ml_collections.ConfigDict, base: str, cell: tuple | None = None) -> str:
  """Where the tokenizer of a base (or of its fine-tune at `cell`, (task, method, d_f, seed)) is: an
  imported folder's own, if it has one, else the study's (`data.tokenizer`)."""
  entry = next((c for c in study.model.checkpoints if c["name"] == base), None)
  if entry is None:
    return study.data.tokenizer
  folders = [entry["path"]]
  if cell is not None:
    tuned = [ft["path"] for ft in entry["finetunes"] if (ft["task"], ft["method"], ft["d_f"], ft["seed"]) == cell]
    if not tuned:
      return study.data.tokenizer  # Fine-tuned here, on the study's tokenizer.
    folders = tuned + folders
  return next((f for f in folders if hf.has_tokenizer(f)), study.data.tokenizer)


def _named(tokenizer: str) -> str:
  return f"the study's {tokenizer!r} tokenizer" if tokenizer in ("world", "shakespeare") else f"folder {tokenizer}"


def _vocabulary_difference(study: ml_collections.ConfigDict, a: str, b: str) -> str:
  """How two tokenizers' vocabularies differ ('' if they are the same)."""
  va, vb = (_vocabulary(study, t) for t in (a, b))
  if va == vb:
    return ""
  if len(va) != len(vb):
    return f"{len(va)} tokens against {len(vb)}"
  token = next(t for t in sorted(va) if va[t] != vb.get(t))
  return f"token {token!r} has id {va[token]} against {vb.get(token)}"


def _vocabulary(study: ml_collections.ConfigDict, tokenizer_spec: str) -> dict[str, int]:
  """A tokenizer's vocabulary (token -> id): the world's, Shakespeare's or a folder's."""
  if tokenizer_spec == "world":
    return _world_vocabulary(json.dumps(study.world.to_dict(), sort_keys=True))
  if tokenizer_spec == "shakespeare":
    return {"shakespeare": 0}  # Trained here on first use: the same wherever it is named.
  return hf.vocabulary(tokenizer_spec)


@functools.lru_cache(maxsize=4)
def _world_vocabulary(world: str) -> dict[str, int]:
  return tokenizer_lib.word_tokenizer(
    world_lib.build_world(world_lib.WorldConfig(**json.loads(world))).vocabulary()
  ).get_vocab()
