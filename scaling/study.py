"""The study schema: defaults, and validation that fails before any training, naming the field."""

from __future__ import annotations

import dataclasses
import math

import ml_collections

from scaling import hf, kinds, methods, sources
from scaling import mesh as mesh_lib
from scaling import model as model_lib
from scaling import study_fields as fields
from scaling.data import world as world_lib
from scaling.study_fields import StudyError  # The error of a study that cannot run, for this module's callers.
from scaling.train_config import TrainConfig


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
  # One base per (size, budget in steps, seed); the fits average a size's fine-tunes over its seeds.
  c.pretrain = ml_collections.ConfigDict(
    {"seeds": (0,), "steps": (1000,), "train": dataclasses.asdict(TrainConfig(seq_len=48, checkpoint_every=500))}
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
  for kind in kinds.KINDS.values():  # The groups that run kinds own (eft, transplant), with their defaults.
    if hasattr(kind, "GROUP"):
      c[kind.GROUP] = ml_collections.ConfigDict(kind.group_defaults())
  c.eval = ml_collections.ConfigDict({"batch_size": 100})
  # How a train step spends memory; like eval.batch_size and mesh, not part of what a run computes
  # (nor of its hash). loss_chunk: the loss's logits are made this many positions at a time and
  # remade in the backward pass, so the float32 (batch, seq, vocab) logits never exist whole; 0
  # makes them all at once. Chunks trade memory for time: set one where the logits bind memory (a
  # large vocabulary, long sequences), as `python -m bench train --loss-chunk` shows.
  c.memory = ml_collections.ConfigDict({"loss_chunk": 0})
  c.mesh = ml_collections.ConfigDict(
    {"shape": {"data": -1, "fsdp": 1, "tensor": 1}, "rules": tuple(mesh_lib.DEFAULT_RULES)}
  )
  # Where training curves go besides metrics.jsonl and TensorBoard's event files (always written):
  # Weights & Biases, off while wandb_project is '', needs the extra scaling[wandb]; one W&B run per
  # run id, grouped by the study's name. Like mesh, how a run executes, not part of its id.
  c.logging = ml_collections.ConfigDict({"wandb_project": "", "wandb_entity": ""})
  # Labels of the runs to run (a run's id without its hash, ft-d32l2-qa-full-df40-s0), with the runs they need;
  # () runs the whole grid. `python -m analysis.design` writes it for the runs it proposes. Not part of a run's id.
  c.only = ()
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


def validate(config: ml_collections.ConfigDict, num_devices: int) -> ml_collections.ConfigDict:
  """The resolved study, or a StudyError naming the first bad field. Runs no training."""
  study = resolve(config)
  world = fields.world_config(study)
  checkpoints = _resolve_checkpoints(study)
  if not study.model.sizes and not checkpoints:
    raise StudyError(
      "model.sizes=[] and model.checkpoints=[]; allowed: names from the size ladder "
      f"{sorted(model_lib.LADDER)}, or checkpoints to import"
    )
  for size in study.model.sizes:
    if size not in model_lib.LADDER:
      raise StudyError(f"model.sizes contains {size!r}; allowed: {sorted(model_lib.LADDER)}")
    fields.model_config(study, size, vocab_size=64)
  fields.each_once("model.sizes", study.model.sizes)
  _resolve_data(study, checkpoints)
  fields.positive_ints("pretrain.steps", study.pretrain.steps)
  fields.positive_ints("finetune.d_f", study.finetune.d_f)
  fields.positive_ints("finetune.pack", (study.finetune.pack,))
  if not isinstance(study.memory.loss_chunk, int) or study.memory.loss_chunk < 0:
    raise StudyError(f"memory.loss_chunk={study.memory.loss_chunk!r}; allowed: 0 (no chunks) or a positive integer")
  for group in ("pretrain", "finetune"):
    seeds = list(study[group].seeds)
    if not seeds or not all(map(fields.is_int, seeds)):
      raise StudyError(f"{group}.seeds={seeds}; allowed: a non-empty list of integers")
    fields.each_once(f"{group}.seeds", seeds)
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
  specs = fields.method_specs(study)
  configs = {size: fields.model_config(study, size, vocab_size=64) for size in study.model.sizes}
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
    cfg = fields.train_config(study[group].train, f"{group}.train")
    if cfg.batch_size % divisor:
      raise StudyError(
        f"{group}.train.batch_size={cfg.batch_size} is not divisible by the data axes "
        f"{batch_axes} of mesh.shape={shape} ({divisor} ways); allowed: a multiple of {divisor}"
      )
  if not fields.is_int(study.eval.batch_size) or study.eval.batch_size < 1:
    raise StudyError(f"eval.batch_size={study.eval.batch_size!r}; allowed: a positive integer")
  if study.eval.batch_size % divisor:
    raise StudyError(f"eval.batch_size={study.eval.batch_size} is not divisible by the {divisor}-way data axes")
  for kind in kinds.KINDS.values():  # The groups that run kinds own (eft, transplant).
    if hasattr(kind, "resolve_group"):
      kind.resolve_group(study)
  _check_logging(study.logging)
  if study.only:
    if not all(isinstance(label, str) for label in study.only):
      raise StudyError(f"only={study.only!r}; allowed: a tuple of run labels (strings), or () for every run")
    try:
      kinds.expand(study)
    except ValueError as e:
      raise StudyError(str(e)) from None
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
  fields.require_wandb(logging.wandb_project)


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
    fields.each_once(
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
  if not fields.is_int(out["d_f"]) or out["d_f"] < 1:
    raise StudyError(f"{where}.d_f={out['d_f']!r}; allowed: a positive integer, the examples it was tuned on")
  if tasks and out["task"] not in tasks:
    raise StudyError(f"{where}.task={out['task']!r} is not a task this study fine-tunes; allowed: {tasks}")
  if not isinstance(out["method"], str):
    raise StudyError(f"{where}.method={out['method']!r}; allowed: a label (a string), default {IMPORTED_METHOD!r}")
  if not fields.is_int(out["seed"]):
    raise StudyError(f"{where}.seed={out['seed']!r}; allowed: an integer")
  cfg = _read_folder(out["path"], block, where)
  differing = [f for f in hf.ARCHITECTURE if getattr(cfg, f) != getattr(base, f)]
  if differing:
    raise StudyError(
      f"{where}.path: {out['path']} is not a fine-tune of {base_path}: their architectures differ "
      f"in {differing}; allowed: a folder of its base's architecture"
    )
  return out


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
