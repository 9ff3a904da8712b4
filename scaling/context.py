"""What every run kind needs: its world, data, tokenizer, model configs and mesh; building and
loading models; and the metrics that fine-tuned and emulated models share."""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable

import jax
import numpy as np
from etils import epath
from flax import nnx
from jax.experimental import multihost_utils

from scaling import decode, evaluate, grid, results, train
from scaling import mesh as mesh_lib
from scaling import methods as methods_lib
from scaling import model as model_lib
from scaling.data import pipeline, tfds_world, tokenizer
from scaling.data import world as world_lib


@dataclasses.dataclass(frozen=True)
class Context:
  """A run with its world, data, tokenizer and mesh."""

  run: grid.Run
  workdir: epath.Path
  world: world_lib.World
  builder: tfds_world.WorldBuilder
  tok: object
  mesh: jax.sharding.Mesh
  rules: tuple

  @property
  def run_dir(self) -> epath.Path:
    return self.workdir / "runs" / self.run.id

  @property
  def model_cfg(self) -> model_lib.ModelConfig:
    """The config of the run's own model size."""
    return self.model_config(self.run.config["size"])

  def model_config(self, size: str) -> model_lib.ModelConfig:
    """A ladder size with the run's block options and the world's vocabulary."""
    return model_lib.ladder_config(size, tokenizer.padded_vocab_size(self.tok), **self.run.config["block"])

  def source(self, split: str):
    return self.builder.as_data_source(split)

  def eval_batches(self, split: str) -> list[dict]:
    return pipeline.eval_batches(self.source(split), self.tok, self.run.execution["eval_batch_size"])

  def dependency(self, run_id: str) -> dict:
    """The result record of a run this one needs; an error if it has not finished."""
    record = results.read_result(self.workdir / "runs" / run_id)
    if record is None:
      raise RuntimeError(f"run {self.run.id} needs {run_id}, which has no result yet")
    return record


def context(run: grid.Run, workdir: str | epath.Path) -> Context:
  """Builds (or finds) the run's dataset and tokenizer and makes its mesh."""
  workdir = results.workdir_path(workdir)
  world_cfg = world_lib.WorldConfig(**run.config["world"])
  if jax.process_count() > 1:  # One host builds the dataset; the others wait, then read it.
    if jax.process_index() == 0:
      tfds_world.prepare(world_cfg, str(workdir / "data"))
    multihost_utils.sync_global_devices(f"world data of {run.id}")
  builder = tfds_world.prepare(world_cfg, str(workdir / "data"))
  world = world_lib.build_world(world_cfg)
  tok = tokenizer.word_tokenizer(world.vocabulary())
  rules = mesh_lib.parse_rules(run.execution["rules"])
  mesh = mesh_lib.make_mesh(run.execution["mesh_shape"])
  return Context(run, workdir, world, builder, tok, mesh, rules)


def model_creator(cfg: model_lib.ModelConfig, method, seed: int) -> Callable[[], nnx.Module]:
  """A function that builds the model, prepared by `method` (None: the bare model)."""

  def create():
    model = model_lib.Transformer(cfg, nnx.Rngs(seed))
    return model if method is None else method.prepare(model, nnx.Rngs(seed + 1))

  return create


def build_model(ctx: Context, size: str, method, seed: int, base_dir: epath.Path | None = None) -> decode.Model:
  """A model of `size`, sharded, with the base weights in `base_dir` if given, then prepared by
  `method` (None: the bare model); its params are what the method trains."""
  cfg = ctx.model_config(size)
  graphdef, state = mesh_lib.create_sharded(model_creator(cfg, None, seed), ctx.mesh, ctx.rules)
  if base_dir is not None:
    state = train.load_params(str(base_dir), state, jax.tree.map(lambda x: x.sharding, state))
  if method is not None:  # After loading: a method may derive its variables from the base weights.
    prepare = lambda base: method.prepare(nnx.merge(graphdef, base), nnx.Rngs(seed + 1))
    graphdef, state = mesh_lib.create_sharded(prepare, ctx.mesh, ctx.rules, state)
  graphdef, trainable, frozen = nnx.split(nnx.merge(graphdef, state), method.trainable if method else nnx.Param,
                                          ...)
  return decode.Model(graphdef, nnx.to_pure_dict(trainable), nnx.to_pure_dict(frozen))


def method_of(spec: dict):
  """The fine-tuning method plug-in of a fine-tune's spec."""
  return methods_lib.from_spec(spec["method"])


# Recently loaded models, by (run directory, mesh, rules): a study's EFT runs reuse a few models
# many times over. Arrays are immutable, so sharing them between runs is safe.
_LOADED: collections.OrderedDict = collections.OrderedDict()
_LOADED_MAX = 4


def load_run_model(ctx: Context, run_id: str) -> decode.Model:
  """The kept model of a finished pretraining or fine-tuning run (of any size in the study)."""
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
  if spec["kind"] == "pretrain":
    return build_model(ctx, spec["size"], None, spec["seed"], runs / run_id / "model")
  model = build_model(ctx, spec["size"], method_of(spec), spec["seed"], runs / spec["base"] / "model")
  shardings = jax.tree.map(lambda x: x.sharding, model.params)
  return model._replace(params=train.load_params(str(runs / run_id / "model"), model.params, shardings))


def value_ids(ctx: Context) -> dict[int, np.ndarray]:
  """Token ids of each attribute's values, by attribute index."""
  return {i: np.asarray([ctx.tok.token_to_id(v) for v in ctx.world.values[attr]])
          for i, attr in enumerate(world_lib.ATTRIBUTES)}


def answer_metrics(ctx: Context, mixture: decode.Mixture, batches: list[dict]) -> dict[str, float]:
  """Knowledge and behaviour of greedy one-word answers."""
  return evaluate.answer_metrics(mixture, batches, value_ids(ctx), ctx.tok.token_to_id(world_lib.EOS), 1)


def task_metrics(ctx: Context, mixture: decode.Mixture, task: str, log=None) -> dict[str, float]:
  """Test loss on answer tokens, knowledge and behaviour on a task's test split.

  `log`, if given, receives each metric as it is measured (a run's progress record).
  """
  test = ctx.eval_batches(world_lib.TASKS[task]["test"])
  metrics = {"test_loss": evaluate.mean_loss(mixture, test)}
  if log:
    log(dict(metrics))
  metrics.update(answer_metrics(ctx, mixture, test))
  if log:
    log(dict(metrics))
  return metrics


def retention_metrics(ctx: Context, mixture: decode.Mixture) -> dict[str, float]:
  """Pretraining-domain held-out loss and cloze knowledge of held-out people."""
  return {"heldout_loss": evaluate.mean_loss(mixture, ctx.eval_batches("pretrain_heldout")),
          "cloze_knowledge": answer_metrics(ctx, mixture, ctx.eval_batches("cloze_test"))["knowledge"]}


def retention_against(ctx: Context, mixture: decode.Mixture, base_metrics: dict) -> dict[str, float]:
  """Retention metrics of a model made from a base, with the base's (`base_<key>`) and the change
  (`delta_<key>`)."""
  out = {}
  for key, value in retention_metrics(ctx, mixture).items():
    out.update({key: value, f"base_{key}": base_metrics[key], f"delta_{key}": value - base_metrics[key]})
  return out


def trained_record(ctx: Context, outcome: train.TrainOutcome, metrics: dict, *, trainable_params: int,
                   pretrain_tokens: float, base: str | None = None, task: str | None = None,
                   method: str | None = None, d_f: int | None = None) -> dict:
  """The result record's fields of a run that trained a model: what it is, its counts, how it went."""
  cfg, mc = ctx.run.config, ctx.model_cfg
  return {"size": cfg["size"], "base": base, "task": task, "method": method, "d_f": d_f, "seed": cfg["seed"],
          "params": model_lib.param_count(mc), "non_embedding_params": model_lib.non_embedding_params(mc),
          "flops_per_token": model_lib.train_flops_per_token(mc, cfg["train"]["seq_len"]),
          "trainable_params": trainable_params, "pretrain_tokens": pretrain_tokens, "metrics": metrics,
          "train": {"steps": outcome.steps, "best_step": outcome.best_step, "best_dev_loss": outcome.best_dev_loss,
                    "hit_step_cap": outcome.hit_step_cap, "tokens_seen": outcome.tokens_seen,
                    "train_seconds": outcome.seconds}}
