"""What every run kind needs: its world, data, tokenizer, model configs and mesh; building and
loading models; and the metrics that fine-tuned and emulated models share."""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable

import jax
from etils import epath
from flax import nnx
from jax.experimental import multihost_utils

from scaling import decode, evaluate, grid, hf, results, timing, train
from scaling import mesh as mesh_lib
from scaling import methods as methods_lib
from scaling import model as model_lib
from scaling import sources as sources_lib
from scaling.data import tokenizer


@dataclasses.dataclass(frozen=True)
class Context:
  """A run with its text sources (corpus, task, tokenizer) and its mesh."""

  run: grid.Run
  workdir: epath.Path
  sources: sources_lib.Sources
  mesh: jax.sharding.Mesh
  rules: tuple

  @property
  def run_dir(self) -> epath.Path:
    return self.workdir / "runs" / self.run.id

  @property
  def loss_chunk(self) -> int:
    """Positions per chunk of the training loss's logits (0: all at once); older specs lack it."""
    return self.run.execution.get("loss_chunk", 0)

  @property
  def tok(self) -> tokenizer.TextTokenizer:
    return self.sources.tok

  @property
  def model_cfg(self) -> model_lib.ModelConfig:
    """The config of the run's own model size."""
    return self.model_config(self.run.config["size"])

  def checkpoint(self, size: str) -> str | None:
    """The model folder that a base of `size` is imported from (None: pretrained here)."""
    entry = self.run.config.get("checkpoints", {}).get(size)
    return entry and entry["path"]

  def model_config(self, size: str) -> model_lib.ModelConfig:
    """A ladder size, or an imported checkpoint's architecture, with the run's block options."""
    return spec_model_config(self.run.config, size, lambda: tokenizer.padded_vocab_size(self.tok.size))

  def eval_batches(self, source) -> list[dict]:
    """Evaluation batches of a record source (a corpus's or a task's split), no longer than the
    inputs that its models trained on (`eval_length`)."""
    with timing.phase("data"):
      return self.sources.eval_batches(source, self.run.execution["eval_batch_size"], self.eval_length(source))

  def eval_length(self, source) -> int | None:
    """The longest input that evaluation gives a model, the longest that training gave it: for the
    run's task's splits, the fine-tuning length; for the corpus's, the base's (its pretraining length,
    or an imported checkpoint's context). None where it is not known (an imported fine-tune's)."""
    cfg = self.run.config
    if "task" in cfg and any(source is self.sources.task(sources_lib.task_of(cfg), r) for r in ("dev", "test")):
      if self.run.kind == "finetune":
        return cfg["train"]["seq_len"]
      tuned = self.dependency(cfg["finetuned"])["spec"] if "finetuned" in cfg else {}  # EFT, transplant.
      return tuned.get("train", {}).get("seq_len")
    base = cfg if self.run.kind in grid.BASE_KINDS else self.dependency(cfg["base"])["spec"]
    if base["kind"] == "pretrain":
      return base["train"]["seq_len"]
    return hf.read_config(self.checkpoint(base["size"])).get("max_position_embeddings")

  def dependency(self, run_id: str) -> dict:
    """The result record of a run this one needs; an error if it has not finished."""
    record = results.read_result(self.workdir / "runs" / run_id)
    if record is None:
      raise RuntimeError(f"run {self.run.id} needs {run_id}, which has no result yet")
    return record


def spec_model_config(spec: dict, size: str, vocab_size: Callable[[], int]) -> model_lib.ModelConfig:
  """The ModelConfig of `size` in a run's spec: an imported checkpoint's architecture, or the ladder
  size with `vocab_size()` tokens; either with the spec's block options."""
  block, checkpoint = spec["block"], spec.get("checkpoints", {}).get(size)
  if checkpoint:
    return hf.model_config(hf.read_config(checkpoint["path"]), **block)
  return model_lib.ladder_config(size, vocab_size(), **block)


def context(run: grid.Run, workdir: str | epath.Path) -> Context:
  """Builds (or finds) the run's datasets and tokenizer and makes its mesh."""
  workdir = results.workdir_path(workdir)
  sources = sources_lib.from_spec(run.config, str(results.data_dir(workdir)))
  tasks = (sources_lib.task_of(run.config),) if "task" in run.config else ()
  with timing.phase("data"):
    if jax.process_count() > 1:  # One host builds the datasets; the others wait, then read them.
      if jax.process_index() == 0:
        sources.prepare(tasks)
      multihost_utils.sync_global_devices(f"data of {run.id}")
    sources.prepare(tasks)
  rules = mesh_lib.parse_rules(run.execution["rules"])
  mesh = mesh_lib.make_mesh(run.execution["mesh_shape"])
  return Context(run, workdir, sources, mesh, rules)


def model_creator(cfg: model_lib.ModelConfig, method, seed: int) -> Callable[[], nnx.Module]:
  """A function that builds the model, prepared by `method` (None: the bare model)."""

  def create():
    model = model_lib.Transformer(cfg, nnx.Rngs(seed))
    return model if method is None else method.prepare(model, nnx.Rngs(seed + 1))

  return create


def build_model(
  ctx: Context, size: str, method, seed: int, base_dir: epath.Path | None = None, folder: str | None = None
) -> decode.Model:
  """A model of `size`, sharded, with the base weights in `base_dir` if given, or those of the
  Hugging Face `folder` (an imported size starts from its checkpoint's), then prepared by `method`
  (None: the bare model); its params are what the method trains."""
  cfg = ctx.model_config(size)
  folder = folder or ctx.checkpoint(size)
  if base_dir is None and not folder:
    graphdef, state = mesh_lib.create_sharded(model_creator(cfg, None, seed), ctx.mesh, ctx.rules)
  else:  # Weights read straight onto their shards: nothing is initialised only to be overwritten.
    graphdef, abstract = nnx.split(nnx.eval_shape(model_creator(cfg, None, seed)))
    shardings = mesh_lib.state_shardings(abstract, ctx.mesh, ctx.rules)
    if base_dir is not None:
      state = train.load_params(str(base_dir), nnx.to_pure_dict(abstract), shardings)
    else:  # Imported: every device reads its slice of the folder's weights.
      state = hf.read_params(folder, cfg, shardings)
  if method is not None:  # After loading: a method may derive its variables from the base weights.
    prepare = lambda base: method.prepare(nnx.merge(graphdef, base), nnx.Rngs(seed + 1), ctx.tok.size)
    graphdef, state = mesh_lib.create_sharded(prepare, ctx.mesh, ctx.rules, state)
  graphdef, trainable, frozen = nnx.split(nnx.merge(graphdef, state), method.trainable if method else nnx.Param, ...)
  return decode.Model(graphdef, nnx.to_pure_dict(trainable), nnx.to_pure_dict(frozen))


def method_of(spec: dict):
  """The fine-tuning method plug-in of a fine-tune's spec."""
  return methods_lib.from_spec(spec["method"])


# Recently loaded models, by (run directory, mesh, rules): a study's EFT runs reuse a few models
# many times over. Arrays are immutable, so sharing them between runs is safe.
_LOADED: collections.OrderedDict = collections.OrderedDict()
_LOADED_MAX = 4


def load_run_model(ctx: Context, run_id: str) -> decode.Model:
  """The kept model of a base or a fine-tune of the study, trained here or imported (of any size)."""
  key = (str(ctx.workdir / "runs" / run_id), ctx.mesh, ctx.rules)
  if key not in _LOADED:
    _LOADED[key] = _load_run_model(ctx, run_id)
    if len(_LOADED) > _LOADED_MAX:
      _LOADED.popitem(last=False)
  _LOADED.move_to_end(key)
  return _LOADED[key]


def _load_run_model(ctx: Context, run_id: str) -> decode.Model:
  spec = ctx.dependency(run_id)["spec"]
  runs = ctx.workdir / "runs"
  if spec["kind"] in grid.BASE_KINDS:
    return build_model(ctx, spec["size"], None, spec["seed"], base_dir(ctx, run_id))
  if "imported" in spec:  # An imported fine-tune: the weights of its own folder.
    return build_model(ctx, spec["size"], None, spec["seed"], folder=spec["imported"]["path"])
  model = build_model(ctx, spec["size"], method_of(spec), spec["seed"], base_dir(ctx, spec["base"]))
  shardings = jax.tree.map(lambda x: x.sharding, model.params)
  return model._replace(params=train.load_params(str(runs / run_id / "model"), model.params, shardings))


def base_dir(ctx: Context, run_id: str) -> epath.Path | None:
  """Where a base run keeps its weights (None: an imported base, read from its checkpoint)."""
  spec = ctx.dependency(run_id)["spec"]
  return None if ctx.checkpoint(spec["size"]) else ctx.workdir / "runs" / run_id / "model"


def task_metrics(ctx: Context, mixture: decode.Mixture, task, log=None) -> dict[str, float]:
  """Test loss on answer tokens of a task's test split, and the task's own metrics (knowledge and
  behaviour for the world's). `log`, if given, receives each metric as it is measured."""
  test = ctx.eval_batches(ctx.sources.task(task, "test"))
  metrics = {}
  with timing.phase("evaluation"):
    metrics["test_loss"], predictions = evaluate.loss_and_predictions(mixture, test)
    if log:
      log(dict(metrics))
    metrics.update(ctx.sources.task_metrics(task, mixture, test, predictions))
    if log:
      log(dict(metrics))
  return metrics


def retention_metrics(ctx: Context, mixture: decode.Mixture) -> dict[str, float]:
  """Pretraining-corpus held-out loss (and, for the world, cloze knowledge of held-out people)."""
  with timing.phase("evaluation"):
    return ctx.sources.retention(mixture, ctx.eval_batches)


def retention_against(ctx: Context, mixture: decode.Mixture, base_metrics: dict) -> dict[str, float]:
  """Retention metrics of a model made from a base, with the base's (`base_<key>`) and the change
  (`delta_<key>`)."""
  out = {}
  for key, value in retention_metrics(ctx, mixture).items():
    out.update({key: value, f"base_{key}": base_metrics[key], f"delta_{key}": value - base_metrics[key]})
  return out


def trained_record(
  ctx: Context,
  outcome: train.TrainOutcome,
  metrics: dict,
  *,
  trainable_params: int,
  pretrain_tokens: float,
  base: str | None = None,
  task: str | None = None,
  method: str | None = None,
  d_f: int | None = None,
) -> dict:
  """The result record's fields of a run that trained a model: what it is, its counts, how it went."""
  cfg, mc = ctx.run.config, ctx.model_cfg
  return {
    "size": cfg["size"],
    "base": base,
    "task": task,
    "method": method,
    "d_f": d_f,
    "seed": cfg["seed"],
    "params": model_lib.param_count(mc),
    "non_embedding_params": model_lib.non_embedding_params(mc),
    "flops_per_token": model_lib.train_flops_per_token(mc, cfg["train"]["seq_len"]),
    "trainable_params": trainable_params,
    "pretrain_tokens": pretrain_tokens,
    "metrics": metrics,
    "train": {
      "steps": outcome.steps,
      "best_step": outcome.best_step,
      "best_dev_loss": outcome.best_dev_loss,
      "hit_step_cap": outcome.hit_step_cap,
      "tokens_seen": outcome.tokens_seen,
      "train_seconds": outcome.seconds,
      "compute_dtype": model_lib.compute_dtype_of(mc),
    },
  }
