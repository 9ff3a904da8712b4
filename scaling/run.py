"""Executes one run of a study: the command that every host of a slice runs.

    python -m scaling.run --spec <workdir>/runs/<run_id>/spec.json

Pretraining trains a base on the world's biographies; fine-tuning loads its base, trains with a
method on a nested subset of a task, keeps the best-dev parameters and evaluates them. Either
way the run ends by writing result.json, atomically; its presence means the run is done.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import jax
from absl import logging
import numpy as np
from etils import epath
from flax import nnx

from scaling import evaluate, grid, results, train
from scaling import mesh as mesh_lib
from scaling import methods as methods_lib
from scaling import model as model_lib
from scaling.data import pipeline, tfds_world, tokenizer
from scaling.data import world as world_lib


@dataclasses.dataclass(frozen=True)
class Context:
  """What every part of a run needs: its world, data, tokenizer, model config and mesh."""

  run: grid.Run
  workdir: epath.Path
  world: world_lib.World
  builder: tfds_world.WorldBuilder
  tok: object
  model_cfg: model_lib.ModelConfig
  mesh: jax.sharding.Mesh
  rules: tuple

  @property
  def run_dir(self) -> epath.Path:
    return self.workdir / "runs" / self.run.id

  def source(self, split: str):
    return self.builder.as_data_source(split)

  def eval_batches(self, split: str) -> list[dict]:
    return pipeline.eval_batches(self.source(split), self.tok, self.run.execution["eval_batch_size"])


def context(run: grid.Run, workdir: str | epath.Path) -> Context:
  """Builds (or finds) the run's dataset and tokenizer and makes its mesh."""
  workdir = results.workdir_path(workdir)
  world_cfg = world_lib.WorldConfig(**run.config["world"])
  builder = tfds_world.prepare(world_cfg, str(workdir / "data"))
  world = world_lib.build_world(world_cfg)
  tok = tokenizer.word_tokenizer(world.vocabulary())
  model_cfg = model_lib.ladder_config(run.config["size"], tokenizer.padded_vocab_size(tok), **run.config["block"])
  rules = mesh_lib.parse_rules(run.execution["rules"])
  mesh = mesh_lib.make_mesh(run.execution["mesh_shape"])
  return Context(run, workdir, world, builder, tok, model_cfg, mesh, rules)


def build_model(ctx: Context, method, seed: int, base_dir: epath.Path | None = None):
  """(graphdef, trainable params, frozen params), sharded; base weights loaded if given."""

  def create():
    model = model_lib.Transformer(ctx.model_cfg, nnx.Rngs(seed))
    return model if method is None else method.prepare(model, nnx.Rngs(seed + 1))

  graphdef, state = mesh_lib.create_sharded(create, ctx.mesh, ctx.rules)
  model = nnx.merge(graphdef, state)
  if base_dir is not None:
    base = nnx.state(nnx.eval_shape(lambda: model_lib.Transformer(ctx.model_cfg, nnx.Rngs(0))), nnx.Param)
    shardings = mesh_lib.state_shardings(base, ctx.mesh, ctx.rules)
    nnx.update(model, train.load_params(str(base_dir), nnx.to_pure_dict(base), shardings))
  graphdef, trainable, frozen = nnx.split(model, method.trainable if method else nnx.Param, ...)
  return graphdef, nnx.to_pure_dict(trainable), nnx.to_pure_dict(frozen)


def value_ids(ctx: Context) -> dict[int, np.ndarray]:
  """Token ids of each attribute's values, by attribute index."""
  return {i: np.asarray([ctx.tok.token_to_id(v) for v in ctx.world.values[attr]])
          for i, attr in enumerate(world_lib.ATTRIBUTES)}


def retention_metrics(ctx: Context, graphdef, params, frozen) -> dict[str, float]:
  """Pretraining-domain held-out loss and cloze knowledge of held-out people."""
  eos = ctx.tok.token_to_id(world_lib.EOS)
  cloze = evaluate.answer_metrics(graphdef, params, frozen, ctx.eval_batches("cloze_test"), value_ids(ctx), eos, 1)
  return {"heldout_loss": evaluate.mean_loss(graphdef, params, frozen, ctx.eval_batches("pretrain_heldout")),
          "cloze_knowledge": cloze["knowledge"]}


def pretrain(ctx: Context) -> dict:
  """Trains a base model on biographies; returns its result record's fields."""
  cfg = ctx.run.config
  tcfg = train.TrainConfig(**cfg["train"])
  graphdef, params, frozen = build_model(ctx, None, cfg["seed"])
  batches = pipeline.train_batches(ctx.source("pretrain"), pipeline.Encoder(ctx.tok, tcfg.seq_len),
                                   tcfg.batch_size, seed=cfg["seed"])
  outcome = train.run(graphdef=graphdef, params=params, frozen=frozen, batches=batches, cfg=tcfg,
                      run_dir=str(ctx.run_dir), mesh=ctx.mesh, rules=ctx.rules, description=ctx.run.id)
  train.save_params(outcome.params, str(ctx.run_dir / "model"))
  return {"metrics": retention_metrics(ctx, graphdef, outcome.params, frozen), "outcome": outcome,
          "trainable_params": model_lib.param_count(ctx.model_cfg), "pretrain_tokens": outcome.tokens_seen}


def finetune(ctx: Context) -> dict:
  """Fine-tunes a base with a method on D_f examples; evaluates it at its best dev step."""
  cfg = ctx.run.config
  tcfg = train.TrainConfig(**cfg["train"])
  splits = world_lib.TASKS[cfg["task"]]
  base = results.read_result(ctx.workdir / "runs" / cfg["base"])
  if base is None:
    raise RuntimeError(f"run {ctx.run.id} needs its base {cfg['base']}, which has no result yet")
  method = methods_lib.get_method(cfg["method"]["name"], **{k: v for k, v in cfg["method"].items() if k != "name"})
  graphdef, params, frozen = build_model(ctx, method, cfg["seed"], ctx.workdir / "runs" / cfg["base"] / "model")
  trainable = sum(x.size for x in jax.tree.leaves(params))
  batches = pipeline.train_batches(ctx.source(splits["train"]), pipeline.Encoder(ctx.tok, tcfg.seq_len),
                                   tcfg.batch_size, seed=cfg["seed"], subset=cfg["d_f"], subset_seed=cfg["seed"])
  outcome = train.run(graphdef=graphdef, params=params, frozen=frozen, batches=batches, cfg=tcfg,
                      run_dir=str(ctx.run_dir), mesh=ctx.mesh, rules=ctx.rules,
                      dev_batches=ctx.eval_batches(splits["dev"]), description=ctx.run.id)
  train.save_params(outcome.params, str(ctx.run_dir / "model"))
  test = ctx.eval_batches(splits["test"])
  eos = ctx.tok.token_to_id(world_lib.EOS)
  metrics = {"test_loss": evaluate.mean_loss(graphdef, outcome.params, frozen, test),
             **evaluate.answer_metrics(graphdef, outcome.params, frozen, test, value_ids(ctx), eos, 1)}
  for key, value in retention_metrics(ctx, graphdef, outcome.params, frozen).items():
    metrics[key] = value
    metrics[f"base_{key}"] = base["metrics"][key]
    metrics[f"delta_{key}"] = value - base["metrics"][key]
  return {"metrics": metrics, "outcome": outcome, "trainable_params": trainable,
          "pretrain_tokens": base["pretrain_tokens"]}


def execute(run: grid.Run, workdir: str | epath.Path) -> dict:
  """Runs (or resumes) one run and writes its result; returns the result record."""
  done = results.read_result(epath.Path(workdir) / "runs" / run.id)
  if done is not None:
    return done
  t0 = time.time()
  ctx = context(run, workdir)
  with mesh_lib.activate(ctx.mesh, ctx.rules):
    out = (pretrain if run.kind == "pretrain" else finetune)(ctx)
  outcome: train.TrainOutcome = out["outcome"]
  cfg, mc = run.config, ctx.model_cfg
  record = {
      "id": run.id, "kind": run.kind, "size": cfg["size"], "base": cfg.get("base"), "task": cfg.get("task"),
      "method": cfg.get("method", {}).get("name"), "d_f": cfg.get("d_f"), "seed": cfg["seed"],
      "params": model_lib.param_count(mc), "non_embedding_params": model_lib.non_embedding_params(mc),
      "flops_per_token": model_lib.train_flops_per_token(mc, cfg["train"]["seq_len"]),
      "trainable_params": out["trainable_params"], "pretrain_tokens": out["pretrain_tokens"],
      "metrics": out["metrics"],
      "train": {"steps": outcome.steps, "best_step": outcome.best_step, "best_dev_loss": outcome.best_dev_loss,
                "hit_step_cap": outcome.hit_step_cap, "tokens_seen": outcome.tokens_seen,
                "train_seconds": outcome.seconds, "total_seconds": time.time() - t0},
      "spec": cfg,
  }
  if jax.process_index() == 0:
    results.write_json(ctx.run_dir / results.RESULT, record)
  return record


def setup_runtime(cache_dir: str | None = None) -> None:
  """Quiet logs and a persistent XLA compilation cache, so runs of one shape compile once."""
  logging.set_verbosity(logging.ERROR)  # Orbax logs every save; TFDS warns of custom configs.
  cache_dir = cache_dir or os.environ.get("SCALING_JAX_CACHE", os.path.expanduser("~/.cache/scaling/jax"))
  jax.config.update("jax_compilation_cache_dir", cache_dir)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def load_spec(path: str | epath.Path) -> tuple[grid.Run, epath.Path]:
  """The run in a spec.json and its study's workdir (<workdir>/runs/<id>/spec.json)."""
  path = epath.Path(path)
  return grid.Run.from_json(json.loads(path.read_text())), path.parent.parent.parent


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description="Execute (or resume) one run of a study.")
  parser.add_argument("--spec", required=True, help="Path to <workdir>/runs/<run_id>/spec.json.")
  setup_runtime()
  run, workdir = load_spec(parser.parse_args(argv).spec)
  record = execute(run, workdir)
  print(json.dumps(record["metrics"], indent=2, default=float))


if __name__ == "__main__":
  main(sys.argv[1:])
