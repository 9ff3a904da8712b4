"""The study schema: defaults, and validation that fails before any training, naming the field."""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import math
from collections.abc import Callable, Iterable

import ml_collections

from scaling import hf, methods, sources
from scaling import mesh as mesh_lib
from scaling import model as model_lib
from scaling.data import tokenizer as tokenizer_lib
from scaling.data import world as world_lib
from scaling.train_config import TrainConfig


class StudyError(ValueError):
  """A study config that cannot run; the message names the field, the value and what is allowed."""


def _fields(cls) -> set[str]:
  return {f.name for f in dataclasses.fields(cls)}


def defaults() -> ml_collections.ConfigDict:
  """Every field a study has, with its default; a study config overrides some of them."""
  c = ml_collections.ConfigDict()
  c.name = "study"
  c.world = dataclasses.asdict(world_lib.WorldConfig())
  # Bases: ladder sizes pretrained here, and checkpoints imported from Hugging Face model folders,
  # each {"name": ..., "path": folder (local or gs://), "pretrain_tokens": tokens it has seen (optional),
  # "finetunes": fine-tunes of that base, imported too (optional)}. An imported fine-tune is
  # {"path": folder, "d_f": examples it was tuned on, "task": a task of the study (default: the first),
  # "method": a label (default "imported"), "seed": (default 0)}; where its base, task, method label,
  # D_f and seed are a cell of the fine-tuning grid, it stands in for that cell, which is not trained.
  c.model = ml_collections.ConfigDict({"sizes": ("d32l2", "d64l2"), "block": {}, "checkpoints": ()})
  # Text (scaling.sources): the pretraining corpus ('world', 'shakespeare' or a TFDS corpus dict) and
  # the tokenizer ('' picks: the first checkpoint's folder, else the corpus's own: 'world' or
  # 'shakespeare'; or a folder that transformers.AutoTokenizer loads).
  c.data = ml_collections.ConfigDict({"corpus": "world", "tokenizer": ""})
  c.pretrain = ml_collections.ConfigDict(
    {"seed": 0, "steps": (1000,), "train": dataclasses.asdict(TrainConfig(seq_len=48, checkpoint_every=500))}
  )
  c.finetune = ml_collections.ConfigDict(
    {
      "tasks": ("qa",),
      "methods": ("full",),
      "d_f": (100, 1000),
      "seeds": (0,),
      # At most this many fine-tunes of one base, method and task, differing in D_f, seed or
      # learning rate, train at once as lanes of one program (scaling.pack); 1 trains each alone.
      # Lanes multiply a step's memory: for large bases on accelerators, set 1.
      "pack": 8,
      "train": dataclasses.asdict(
        TrainConfig(
          seq_len=16,
          schedule="constant",
          learning_rate=1e-3,
          warmup_steps=10,
          max_steps=1000,
          weight_decay=0.0,
          eval_every=20,
          patience=3,
          checkpoint_every=200,
        )
      ),
    }
  )
  # Emulated fine-tuning (scaling.kinds.eft). Empty or None fields are filled in by `validate`:
  # pairs -> every ordered (N1, N2) pair of the bases (model.sizes and model.checkpoints); d_f -> the
  # smallest and largest D_f of the method's fine-tunes; task, method, seed -> the first of
  # finetune's; pretrain_steps -> the largest pretraining budget. A disabled group is not checked.
  c.eft = ml_collections.ConfigDict(
    {
      "enabled": False,
      "task": "",
      "method": "",
      "d_f": (),
      "seed": -1,
      "pretrain_steps": 0,
      "betas": (0.5, 1.0, 1.5),
      "pairs": (),
    }
  )
  # Layer transplants (scaling.kinds.transplant): a full fine-tune with its lower or upper k blocks
  # reset to the base's, for every k from 1 to layers - 1. Empty fields, as for eft: task, method
  # (a full-tuning label, or an imported fine-tune's) and seed -> the first of finetune's; d_f -> the
  # largest D_f of the method's fine-tunes.
  c.transplant = ml_collections.ConfigDict(
    {"enabled": False, "task": "", "method": "", "d_f": (), "seed": -1, "parts": ("lower", "upper")}
  )
  c.eval = ml_collections.ConfigDict({"batch_size": 100})
  # How a train step spends memory; like eval.batch_size and mesh, not part of what a run computes
  # (nor of its hash). loss_chunk: the loss's logits are made this many positions at a time and
  # remade in the backward pass, so the float32 (batch, seq, vocab) logits never exist whole; 0
  # makes them all at once. Chunks trade memory for time: set one where the logits bind memory (a
  # large vocabulary, long sequences), as `python -m scaling.bench train --loss-chunk` shows.
  c.memory = ml_collections.ConfigDict({"loss_chunk": 0})
  c.mesh = ml_collections.ConfigDict(
    {"shape": {"data": -1, "fsdp": 1, "tensor": 1}, "rules": tuple(mesh_lib.DEFAULT_RULES)}
  )
  # Where training curves go besides metrics.jsonl and TensorBoard's event files (always written):
  # Weights & Biases, off while wandb_project is '', needs the extra scaling[wandb]; one W&B run per
  # run id, grouped by the study's name. Like mesh, how a run executes, not part of its id.
  c.logging = ml_collections.ConfigDict({"wandb_project": "", "wandb_entity": ""})
  return c


# Groups whose keys are free-form: they are replaced whole, not merged field by field.
_OPEN_GROUPS = ("model.block", "mesh.shape", "data.corpus")


def resolve(config: ml_collections.ConfigDict | dict) -> ml_collections.ConfigDict:
  """The study with defaults filled in; unknown fields are errors."""
  out = defaults()
  _merge(out, config.to_dict() if hasattr(config, "to_dict") else dict(config), "")
  return out


def check_override(path: str) -> None:
  """Raises StudyError unless `path` (a.b.c, as in --config.a.b.c=...) is a field of a study."""
  node, done = defaults(), []
  for key in path.split("."):
    if ".".join(done) in _OPEN_GROUPS:
      return  # Free-form groups take any key; ModelConfig and the mesh check theirs later.
    if not isinstance(node, ml_collections.ConfigDict) or key not in node:
      where = ".".join(done) or "the study"
      allowed = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
      raise StudyError(f"--config.{path}: {key!r} is not a field of {where}; allowed: {allowed}")
    node = node[key]
    done.append(key)


def _merge(into: ml_collections.ConfigDict, src: dict, prefix: str) -> None:
  for key, value in src.items():
    path = f"{prefix}{key}"
    if key not in into:
      raise StudyError(f"{path} is not a study field; allowed here: {sorted(into.keys())}")
    if isinstance(into[key], ml_collections.ConfigDict) and path not in _OPEN_GROUPS:
      if not isinstance(value, dict):
        raise StudyError(f"{path}={value!r} must be a group of fields: {sorted(into[key].keys())}")
      _merge(into[key], value, path + ".")
      continue
    if isinstance(value, list):  # Config files may write lists; overrides need tuples.
      value = tuple(value)
    if path in _OPEN_GROUPS:  # Replaced whole, whatever its type was (data.corpus: a name or a dict).
      del into[key]
    try:
      into[key] = ml_collections.ConfigDict(value) if isinstance(value, dict) else value
    except TypeError as e:
      raise StudyError(f"{path}={value!r}: {e}") from None


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _positive_ints(name: str, values: Iterable) -> None:
  values = list(values)
  if not values or any(not _is_int(v) or v < 1 for v in values):
    raise StudyError(f"{name}={values}; allowed: a non-empty list of positive integers")
  _each_once(name, values)


def _each_once(name: str, values: Iterable) -> None:
  """A grid axis lists each value once: a repeat would make two runs of one id."""
  values = list(values)
  repeated = next((v for i, v in enumerate(values) if v in values[:i]), None)
  if repeated is not None:
    raise StudyError(f"{name}={values} lists {repeated!r} twice; allowed: each value once")


def train_config(group: ml_collections.ConfigDict, prefix: str, **overrides) -> TrainConfig:
  """The TrainConfig of `pretrain.train` or `finetune.train`."""
  unknown = set(group.keys()) - _fields(TrainConfig)
  if unknown:
    raise StudyError(f"{prefix}.{sorted(unknown)[0]} is not a training field; allowed: {sorted(_fields(TrainConfig))}")
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
  unknown = set(block) - (_fields(model_lib.ModelConfig) - LADDER_FIELDS)
  if unknown:
    raise StudyError(
      f"model.block.{sorted(unknown)[0]} is not a block option; "
      f"allowed: {sorted(_fields(model_lib.ModelConfig) - LADDER_FIELDS)}"
    )
  try:
    cfg = model_lib.ladder_config(size, vocab_size, **block)
    cfg.validate()
  except ValueError as e:
    raise StudyError(f"model.sizes: {e}") from None
  return cfg


def world_config(study: ml_collections.ConfigDict) -> world_lib.WorldConfig:
  unknown = set(study.world.keys()) - _fields(world_lib.WorldConfig)
  if unknown:
    raise StudyError(
      f"world.{sorted(unknown)[0]} is not a world field; allowed: {sorted(_fields(world_lib.WorldConfig))}"
    )
  cfg = world_lib.WorldConfig(**study.world.to_dict())
  try:
    cfg.validate()
  except ValueError as e:
    raise StudyError(str(e)) from None
  return cfg


def validate(config: ml_collections.ConfigDict, num_devices: int) -> ml_collections.ConfigDict:
  """The resolved study, or a StudyError naming the first bad field. Runs no training."""
  study = resolve(config)
  world = world_config(study)
  checkpoints = _resolve_checkpoints(study)
  if not study.model.sizes and not checkpoints:
    raise StudyError(
      "model.sizes=[] and model.checkpoints=[]; allowed: names from the size ladder "
      f"{sorted(model_lib.LADDER)}, or checkpoints to import"
    )
  for size in study.model.sizes:
    if size not in model_lib.LADDER:
      raise StudyError(f"model.sizes contains {size!r}; allowed: {sorted(model_lib.LADDER)}")
    model_config(study, size, vocab_size=64)
  _each_once("model.sizes", study.model.sizes)
  _resolve_data(study, checkpoints)
  _positive_ints("pretrain.steps", study.pretrain.steps)
  _positive_ints("finetune.d_f", study.finetune.d_f)
  _positive_ints("finetune.pack", (study.finetune.pack,))
  if not isinstance(study.memory.loss_chunk, int) or study.memory.loss_chunk < 0:
    raise StudyError(f"memory.loss_chunk={study.memory.loss_chunk!r}; allowed: 0 (no chunks) or a positive integer")
  seeds = list(study.finetune.seeds)
  if not seeds or not all(map(_is_int, seeds)):
    raise StudyError(f"finetune.seeds={seeds}; allowed: a non-empty list of integers")
  _each_once("finetune.seeds", seeds)
  imported = any(c["finetunes"] for c in study.model.checkpoints)
  if not study.finetune.tasks:
    raise StudyError(f"finetune.tasks=[]; allowed: a non-empty list (default: {list(defaults().finetune.tasks)})")
  if not study.finetune.methods and not imported:  # With imported fine-tunes, () trains none here.
    raise StudyError(
      f"finetune.methods=[]; allowed: a non-empty list (default: {list(defaults().finetune.methods)}), "
      "or [] with fine-tunes imported in model.checkpoints"
    )
  if study.pretrain.train.max_steps != defaults().pretrain.train.max_steps:
    raise StudyError(
      f"pretrain.train.max_steps={study.pretrain.train.max_steps}: pretraining runs as many steps as "
      "each budget in pretrain.steps says; allowed: leave it out and list the budgets in pretrain.steps"
    )
  specs = method_specs(study)
  configs = {size: model_config(study, size, vocab_size=64) for size in study.model.sizes}
  configs.update({name: c["config"] for name, c in checkpoints.items()})
  for size, cfg in configs.items():
    for spec in specs:
      try:
        methods.from_spec(spec).check(cfg, study.finetune.train.seq_len)
      except ValueError as e:
        raise StudyError(f"finetune.methods: {methods.label(spec)} on model size {size!r}: {e}") from None
  names = []
  for i, task in enumerate(study.finetune.tasks):
    task = task.to_dict() if isinstance(task, ml_collections.ConfigDict) else task
    try:
      names.append(sources.check_task(task, f"finetune.tasks[{i}]", study.data.tokenizer))
      n_train = sources.task_size(task, world)
    except ValueError as e:
      raise StudyError(str(e)) from None
    too_big = [d for d in study.finetune.d_f if d > n_train]
    if too_big:
      raise StudyError(
        f"finetune.d_f contains {too_big[0]}, more than the {n_train} examples of task "
        f"{names[-1]!r}'s training split; allowed: 1 to {n_train}"
      )
  if len(set(names)) < len(names):
    raise StudyError(f"finetune.tasks names {names}; allowed: each task once")
  try:
    sizes = mesh_lib.resolve_shape(study.mesh.shape.to_dict(), num_devices)
  except ValueError as e:
    raise StudyError(str(e)) from None
  _check_rules(study.mesh.rules)
  shape = dict(zip(mesh_lib.MESH_AXES, sizes))
  batch_axes = mesh_lib.batch_axes(mesh_lib.parse_rules(study.mesh.rules))
  divisor = math.prod(shape[a] for a in batch_axes)
  for group in ("pretrain", "finetune"):
    cfg = train_config(study[group].train, f"{group}.train")
    if cfg.batch_size % divisor:
      raise StudyError(
        f"{group}.train.batch_size={cfg.batch_size} is not divisible by the data axes "
        f"{batch_axes} of mesh.shape={shape} ({divisor} ways); allowed: a multiple of {divisor}"
      )
  if not _is_int(study.eval.batch_size) or study.eval.batch_size < 1:
    raise StudyError(f"eval.batch_size={study.eval.batch_size!r}; allowed: a positive integer")
  if study.eval.batch_size % divisor:
    raise StudyError(f"eval.batch_size={study.eval.batch_size} is not divisible by the {divisor}-way data axes")
  _resolve_eft(study)
  _resolve_transplant(study)
  _check_logging(study.logging)
  return study


def _check_rules(rules) -> None:
  """`mesh.rules`: (logical axis, mesh axes) pairs, the mesh axes None, one of MESH_AXES or a tuple of them."""
  allowed = f"pairs (logical axis, mesh axes), the mesh axes None, one of {list(mesh_lib.MESH_AXES)} or a tuple of them"
  for i, rule in enumerate(rules):
    if not isinstance(rule, (tuple, list)) or len(rule) != 2 or not isinstance(rule[0], str):
      raise StudyError(f"mesh.rules[{i}]={rule!r}; allowed: {allowed}")
    axes = rule[1] if isinstance(rule[1], (tuple, list)) else () if rule[1] is None else (rule[1],)
    bad = [a for a in axes if a not in mesh_lib.MESH_AXES]
    if bad:
      raise StudyError(f"mesh.rules[{i}]={tuple(rule)!r}: {bad[0]!r} is not a mesh axis; allowed: {allowed}")


def _check_logging(logging: ml_collections.ConfigDict) -> None:
  """`logging`: W&B's project and entity are strings, and a project needs the wandb package."""
  for field in ("wandb_project", "wandb_entity"):
    if not isinstance(logging[field], str):
      raise StudyError(f"logging.{field}={logging[field]!r}; allowed: a string ('' for none)")
  if logging.wandb_entity and not logging.wandb_project:
    raise StudyError(
      f"logging.wandb_entity={logging.wandb_entity!r} with logging.wandb_project=''; allowed: "
      "a W&B project in logging.wandb_project too, or no entity"
    )
  require_wandb(logging.wandb_project)


def require_wandb(project: str) -> None:
  """Raises StudyError if W&B logging is on (a project is set) and wandb is not installed."""
  if project and importlib.util.find_spec("wandb") is None:
    raise StudyError(
      f"logging.wandb_project={project!r} needs Weights & Biases, which is not installed; allowed: "
      "'' (off), or install the extra scaling[wandb] (pip install 'scaling[wandb]')"
    )


CHECKPOINT_FIELDS = ("name", "path", "pretrain_tokens", "finetunes")
FINETUNE_CHECKPOINT_FIELDS = ("path", "d_f", "task", "method", "seed")
IMPORTED_METHOD = "imported"  # The method label of an imported fine-tune that names none.


def _read_folder(path, block: dict, where: str) -> model_lib.ModelConfig:
  """The architecture of a model folder (its config.json must be one we implement, its weights present)."""
  try:
    cfg = hf.model_config(hf.read_config(path), **block)
    hf.Tensors(path)
  except (ValueError, TypeError) as e:
    raise StudyError(f"{where}.path: {e}") from None
  return cfg


def _resolve_checkpoints(study: ml_collections.ConfigDict) -> dict[str, dict]:
  """Checks `model.checkpoints` and their imported fine-tunes (every folder is read), filling in the
  fine-tunes' defaults; returns name -> {"path", "pretrain_tokens", "config"}."""
  out, entries = {}, []
  block = study.model.block.to_dict()
  tasks = [sources.task_name(t) for t in study.finetune.tasks]
  for i, entry in enumerate(study.model.checkpoints):
    where = f"model.checkpoints[{i}]"
    entry = entry.to_dict() if isinstance(entry, ml_collections.ConfigDict) else entry
    if not isinstance(entry, dict) or not {"name", "path"} <= set(entry) or set(entry) - set(CHECKPOINT_FIELDS):
      raise StudyError(
        f"{where}={entry!r}; allowed: a dict with 'name' and 'path' (and optionally 'pretrain_tokens' and 'finetunes')"
      )
    name, tokens = entry["name"], entry.get("pretrain_tokens")
    if not isinstance(name, str) or not name or name in model_lib.LADDER or name in out:
      raise StudyError(f"{where}.name={name!r}; allowed: a new non-empty name, not a ladder size")
    if tokens is not None and (isinstance(tokens, bool) or not isinstance(tokens, (int, float)) or tokens <= 0):
      raise StudyError(f"{where}.pretrain_tokens={tokens!r}; allowed: a positive number, or absent")
    cfg = _read_folder(entry["path"], block, where)
    finetunes = tuple(
      _resolve_finetune_checkpoint(ft, f"{where}.finetunes[{j}]", entry["path"], cfg, tasks, block)
      for j, ft in enumerate(entry.get("finetunes") or ())
    )
    _each_once(
      f"{where}.finetunes' (task, method, d_f, seed)",
      [(f["task"], f["method"], f["d_f"], f["seed"]) for f in finetunes],
    )
    entries.append({**entry, "path": str(entry["path"]), "finetunes": finetunes})
    out[name] = {"path": str(entry["path"]), "pretrain_tokens": tokens, "config": cfg}
  study.model.checkpoints = tuple(entries)
  return out


def _resolve_finetune_checkpoint(
  ft, where: str, base_path: str, base: model_lib.ModelConfig, tasks: list[str], block: dict
) -> dict:
  """One imported fine-tune of a checkpoint, checked (a folder of its base's architecture) and with its defaults."""
  ft = ft.to_dict() if isinstance(ft, ml_collections.ConfigDict) else ft
  if not isinstance(ft, dict) or not {"path", "d_f"} <= set(ft) or set(ft) - set(FINETUNE_CHECKPOINT_FIELDS):
    raise StudyError(
      f"{where}={ft!r}; allowed: a dict with 'path' and 'd_f' (and optionally 'task', 'method' and 'seed')"
    )
  out = {
    "path": str(ft["path"]),
    "d_f": ft["d_f"],
    "task": ft.get("task") or (tasks[0] if tasks else ""),
    "method": ft.get("method") or IMPORTED_METHOD,
    "seed": ft.get("seed", 0),
  }
  if not _is_int(out["d_f"]) or out["d_f"] < 1:
    raise StudyError(f"{where}.d_f={out['d_f']!r}; allowed: a positive integer, the examples it was tuned on")
  if tasks and out["task"] not in tasks:
    raise StudyError(f"{where}.task={out['task']!r} is not a task this study fine-tunes; allowed: {tasks}")
  if not isinstance(out["method"], str):
    raise StudyError(f"{where}.method={out['method']!r}; allowed: a label (a string), default {IMPORTED_METHOD!r}")
  if not _is_int(out["seed"]):
    raise StudyError(f"{where}.seed={out['seed']!r}; allowed: an integer")
  cfg = _read_folder(out["path"], block, where)
  differing = [f for f in hf.ARCHITECTURE if getattr(cfg, f) != getattr(base, f)]
  if differing:
    raise StudyError(
      f"{where}.path: {out['path']} is not a fine-tune of {base_path}: their architectures differ "
      f"in {differing}; allowed: a folder of its base's architecture"
    )
  return out


def bases(study: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The names of a study's bases: its ladder sizes, then its checkpoints."""
  return tuple(study.model.sizes) + tuple(c["name"] for c in study.model.checkpoints)


def _resolve_data(study: ml_collections.ConfigDict, checkpoints: dict[str, dict]) -> None:
  """Checks the corpus and fills in the tokenizer: the first checkpoint's, else the corpus's own."""
  d = study.data
  corpus = d.corpus.to_dict() if isinstance(d.corpus, ml_collections.ConfigDict) else d.corpus
  try:
    sources.check_corpus(corpus)
  except ValueError as e:
    raise StudyError(str(e)) from None
  chosen = bool(d.tokenizer)
  if not d.tokenizer:
    if study.model.checkpoints:
      d.tokenizer = str(study.model.checkpoints[0]["path"])
    elif isinstance(corpus, str):
      d.tokenizer = corpus
    else:
      raise StudyError(
        "data.tokenizer='' with a TFDS corpus; allowed: a folder that transformers.AutoTokenizer "
        "loads (its tokenizer.json and tokenizer_config.json)"
      )
  if d.tokenizer not in ("world", "shakespeare"):
    try:
      size = sources.Sources(world_lib.WorldConfig(), "", corpus, d.tokenizer).tok.size
    except ValueError as e:
      hint = (
        ""
        if chosen
        else (
          " (data.tokenizer='' takes the first checkpoint's); allowed: a folder with a "
          "tokenizer, named in data.tokenizer"
        )
      )
      raise StudyError(f"data.tokenizer: {e}{hint}") from None
    for name, entry in checkpoints.items():
      if entry["config"].vocab_size < size:
        raise StudyError(
          f"data.tokenizer {d.tokenizer!r} has {size} tokens, more than checkpoint {name!r}'s "
          f"vocabulary of {entry['config'].vocab_size}; allowed: the checkpoints' own tokenizer"
        )


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


def _fine_tuned(study: ml_collections.ConfigDict) -> dict[tuple, dict[str, set]]:
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


def _resolve_eft(study: ml_collections.ConfigDict) -> None:
  """Checks an enabled `eft` group against what the study fine-tunes and fills in its defaults."""
  e = study.eft
  if not e.enabled:
    return
  tuned = _resolve_finetune_choice(study, "eft")
  e.pretrain_steps = _one_of(
    "eft.pretrain_steps",
    e.pretrain_steps,
    study.pretrain.steps,
    "a pretraining budget of this study",
    max(study.pretrain.steps),
    0,
  )
  betas = list(e.betas)
  if not betas or any(isinstance(b, bool) or not isinstance(b, (int, float)) or not math.isfinite(b) for b in betas):
    raise StudyError(
      f"eft.betas={betas}; allowed: a non-empty list of finite numbers (1.0 is plain EFT, 0.0 the base N1 alone)"
    )
  e.betas = tuple(float(b) for b in betas)
  _each_once("eft.betas", e.betas)
  names = bases(study)
  for i, pair in enumerate(e.pairs):
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
      raise StudyError(f"eft.pairs[{i}]={pair!r}; allowed: a pair (N1, N2) of the study's bases")
    for name in pair:
      if name not in names:
        raise StudyError(
          f"eft.pairs[{i}]={tuple(pair)!r}: {name!r} is not a base of this study; allowed: {list(names)}"
        )
  # By default every ordered pair whose N2 has fine-tunes of the chosen cell.
  e.pairs = tuple(tuple(p) for p in e.pairs) or tuple((n1, n2) for n1 in names for n2 in names if tuned[n2])
  _each_once("eft.pairs", e.pairs)
  cell = f"task {e.task!r}, method {e.method!r}, seed {e.seed}"
  for i, (n1, n2) in enumerate(e.pairs):
    if not tuned[n2]:
      raise StudyError(
        f"eft.pairs[{i}]=({n1!r}, {n2!r}): {n2!r} has no fine-tune of {cell}; allowed: pairs whose "
        f"N2 has one: {sorted(b for b, d_fs in tuned.items() if d_fs)}"
      )
  e.d_f = _d_f_subset("eft.d_f", e.d_f, sorted(set().union(*tuned.values())))
  if not e.d_f:  # The smallest and largest D_f that every N2 has.
    common = sorted(set.intersection(*(tuned[n2] for _, n2 in e.pairs)))
    if not common:
      raise StudyError(
        f"eft.d_f=(): the N2 of eft.pairs have no D_f in common ({cell}); allowed: eft.d_f, or pairs whose N2 share one"
      )
    e.d_f = tuple(dict.fromkeys((common[0], common[-1])))
  for i, (n1, n2) in enumerate(e.pairs):
    missing = [d for d in e.d_f if d not in tuned[n2]]
    if missing:
      raise StudyError(
        f"eft.pairs[{i}]=({n1!r}, {n2!r}): {n2!r} has no fine-tune at D_f={missing[0]} of {cell}; "
        f"allowed: pairs whose N2 has one (its D_f: {sorted(tuned[n2])}), or eft.d_f that every N2 has"
      )
    _check_mixture(
      study,
      f"eft.pairs[{i}]=({n1!r}, {n2!r})",
      [(n1, None), *((n2, (e.task, e.method, d_f, e.seed)) for d_f in e.d_f), (n2, None)],
    )


def _one_of(field: str, value, allowed, what: str, default, unset):
  """`value` if it is one of `allowed`, `default` if it is `unset`; else a StudyError naming `field`."""
  if value == unset:
    return default
  if value not in allowed:
    raise StudyError(f"{field}={value!r} is not {what}; allowed: {list(allowed)}")
  return value


def _resolve_finetune_choice(
  study: ml_collections.ConfigDict, group: str, allowed: Callable[[str], bool] = lambda label: True
) -> dict[str, set]:
  """Fills in (or checks) a group's task, method and seed, one cell of the study's fine-tunes
  (trained here or imported) whose method label is `allowed`; returns base name -> its D_f there."""
  g, ft = study[group], study.finetune
  cells = {key: tuned for key, tuned in _fine_tuned(study).items() if allowed(key[1])}
  names = [sources.task_name(t) for t in ft.tasks]
  labels = list(dict.fromkeys(label for _, label, _ in cells))
  seeds = list(dict.fromkeys(seed for _, _, seed in cells))
  g.task = _one_of(f"{group}.task", g.task, names, "a task this study fine-tunes", names[0], "")
  g.method = _one_of(f"{group}.method", g.method, labels, "a method this study fine-tunes with", labels[0], "")
  g.seed = _one_of(f"{group}.seed", g.seed, seeds, "a fine-tuning seed of this study", seeds[0], -1)
  key = (g.task, g.method, g.seed)
  if key not in cells:
    raise StudyError(
      f"{group}: no fine-tunes of task {g.task!r}, method {g.method!r} and seed {g.seed}; allowed: "
      f"(task, method, seed) among {sorted(cells)}"
    )
  return cells[key]


def _d_f_subset(field: str, values: Iterable, allowed: Iterable) -> tuple:
  """`values` after checking that each is one of the study's D_f."""
  for d_f in values:
    if d_f not in allowed:
      raise StudyError(f"{field} contains {d_f!r}, which this study does not fine-tune on; allowed: {list(allowed)}")
  _each_once(field, values)
  return tuple(values)


def _resolve_transplant(study: ml_collections.ConfigDict) -> None:
  """Checks an enabled `transplant` group: whole fine-tunes only (it resets blocks of the fine-tuned
  weights), those trained here by full tuning of every layer or imported."""
  t = study.transplant
  if not t.enabled:
    return
  full = {methods.label(spec) for spec in method_specs(study) if spec["name"] == "full" and spec["layers"] is None}
  imported = {ft["method"] for c in study.model.checkpoints for ft in c["finetunes"]}
  if not full | imported:
    raise StudyError(
      "transplant.enabled needs full tuning of every layer in finetune.methods, or imported "
      "fine-tunes; allowed: add 'full' to finetune.methods, or transplant.enabled=False"
    )
  tuned = _resolve_finetune_choice(study, "transplant", lambda label: label in full | imported)
  t.d_f = _d_f_subset("transplant.d_f", t.d_f, sorted(set().union(*tuned.values()))) or (
    max(set().union(*tuned.values())),
  )
  parts = tuple(t.parts)
  if not parts or any(p not in ("lower", "upper") for p in parts):
    raise StudyError(f"transplant.parts={parts!r}; allowed: a non-empty subset of ('lower', 'upper')")
  _each_once("transplant.parts", parts)
  t.parts = parts
  for name, d_fs in tuned.items():
    cells = [(name, (t.task, t.method, d_f, t.seed)) for d_f in t.d_f if d_f in d_fs]
    if cells:
      _check_mixture(study, f"transplant of {name!r}", [(name, None), *cells])


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


def _check_mixture(study: ml_collections.ConfigDict, where: str, models: list[tuple[str, tuple | None]]) -> None:
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
