"""Fine-tuning: each base, with each method, on nested subsets of each task (D_f examples)."""

from __future__ import annotations

import dataclasses
import json

import jax
import ml_collections

from scaling import context as context_lib
from scaling import decode, grid, methods, pack, sources, timing, train
from scaling import study_fields as fields
from scaling.data import pipeline
from scaling.methods import common


def cells(study: ml_collections.ConfigDict, prior: list[grid.Run], execution: dict) -> list[grid.Run]:
  """One run per (base, task, method, D_f, seed), after its base; not those that an imported
  fine-tune stands in for."""
  world = fields.world_config(study).spec()
  train_cfg = dataclasses.asdict(fields.train_config(study.finetune.train, "finetune.train"))
  imported = {
    (r.config["base"], r.config["task"], r.config["method"], r.config["d_f"], r.config["seed"])
    for r in prior
    if r.kind == "finetune_checkpoint"
  }
  runs = []
  for base in (r for r in prior if r.kind in grid.BASE_KINDS):
    size = base.config["size"]
    for task in map(sources.task_name, study.finetune.tasks):
      for method in fields.method_specs(study):
        for d_f in study.finetune.d_f:
          for seed in study.finetune.seeds:
            if (base.id, task, methods.label(method), d_f, seed) in imported:
              continue
            spec = {
              "kind": "finetune",
              "world": world,
              "size": size,
              "block": base.config["block"],
              "base": base.id,
              "task": task,
              "method": method,
              "d_f": d_f,
              "seed": seed,
              "train": train_cfg,
              **fields.data_fields(study, task, (size,)),
            }
            label = (
              f"ft-{size}{grid.pretrain_seed_tag(base.config['seed'])}-{task}-{methods.label(method)}-df{d_f}-s{seed}"
            )
            runs.append(grid.Run(grid.run_id(label, spec), "finetune", spec, (base.id,), execution))
  return runs


def of_cell(runs: list[grid.Run], task: str, method: str, seed: int) -> dict[tuple[str, int], grid.Run]:
  """The fine-tunes (trained here or imported) among `runs` of a task, method label and seed, by (base id, D_f)."""
  return {
    (r.config["base"], r.config["d_f"]): r
    for r in runs
    if r.kind in grid.FINETUNE_KINDS
    and (r.config["task"], methods.label(r.config["method"]), r.config["seed"]) == (task, method, seed)
  }


def pack_key(run: grid.Run):
  """Fine-tunes with equal keys may train as lanes of one program: the same spec but for D_f,
  seed and learning rate."""
  lanes = ("d_f", "seed")
  method = {k: v for k, v in run.config["method"].items() if k != "learning_rate"}
  train_cfg = {k: v for k, v in run.config["train"].items() if k != "learning_rate"}
  return json.dumps(
    {**{k: v for k, v in run.config.items() if k not in lanes}, "method": method, "train": train_cfg}, sort_keys=True
  )


@dataclasses.dataclass(frozen=True)
class _Setup:
  """A fine-tune ready to train: its model (base plus method), settings and data."""

  model: decode.Model
  cfg: train.TrainConfig
  batches: pipeline.StepBatches
  trainable: int


def _setup(ctx: context_lib.Context, models: dict | None = None) -> _Setup:
  """`models` keeps the models built so far by seed: the runs of a pack differ in D_f, seed and
  learning rate, so those of one seed start from one model."""
  cfg = ctx.run.config
  tcfg = train.TrainConfig(**{**cfg["train"], **methods.training_overrides(cfg["method"])})
  task = sources.task_of(cfg)
  models = {} if models is None else models
  if cfg["seed"] not in models:
    models[cfg["seed"]] = context_lib.build_model(
      ctx, cfg["size"], context_lib.method_of(cfg), cfg["seed"], context_lib.base_dir(ctx, cfg["base"])
    )
  model = models[cfg["seed"]]
  with timing.phase("data"):
    batches = pipeline.train_batches(
      ctx.sources.task(task, "train"),
      pipeline.Encoder(ctx.tok, tcfg.seq_len, truncate=not sources.is_world_task(task)),
      tcfg.batch_size,
      seed=cfg["seed"],
      subset=cfg["d_f"],
      subset_seed=cfg["seed"],
    )
  return _Setup(model, tcfg, batches, sum(x.size for x in jax.tree.leaves(model.params)))


def _dev_batches(ctx: context_lib.Context) -> list[dict]:
  return ctx.eval_batches(ctx.sources.task(sources.task_of(ctx.run.config), "dev"))


def _finish(ctx: context_lib.Context, setup: _Setup, outcome: train.TrainOutcome) -> dict:
  """Saves the kept parameters, evaluates them and returns the result record's fields."""
  cfg, model = ctx.run.config, setup.model
  base = ctx.dependency(cfg["base"])
  train.save_params(outcome.params, str(ctx.run_dir / "model"))
  mixture = decode.Mixture.single(model.graphdef, outcome.params, model.frozen)
  metrics = context_lib.task_metrics(ctx, mixture, sources.task_of(cfg))
  metrics.update(context_lib.retention_against(ctx, mixture, base["metrics"]))
  record = context_lib.trained_record(
    ctx,
    outcome,
    metrics,
    trainable_params=setup.trainable,
    pretrain_tokens=base["pretrain_tokens"],
    base=cfg["base"],
    task=cfg["task"],
    method=methods.label(cfg["method"]),
    d_f=cfg["d_f"],
  )
  record["train"]["learning_rate"] = setup.cfg.learning_rate  # The study's, or the method's own.
  # How far each block's weights moved from the base's, for the layer-locality analysis.
  record["layer_change"] = common.layer_change(
    context_lib.load_run_model(ctx, cfg["base"]).module(), mixture.modules()[0]
  )
  return record


def execute(ctx: context_lib.Context) -> dict:
  """Fine-tunes a base with a method on D_f examples; evaluates it at its best dev step."""
  setup = _setup(ctx)
  model = setup.model
  outcome = train.run(
    graphdef=model.graphdef,
    params=model.params,
    frozen=model.frozen,
    batches=setup.batches,
    cfg=setup.cfg,
    run_dir=str(ctx.run_dir),
    mesh=ctx.mesh,
    rules=ctx.rules,
    dev_batches=_dev_batches(ctx),
    description=ctx.run.id,
    loss_chunk=ctx.loss_chunk,
  )
  return _finish(ctx, setup, outcome)


def execute_pack(ctxs: list[context_lib.Context]) -> list[dict]:
  """Fine-tunes that share a pack key, trained as lanes of one program; each evaluated as alone."""
  models = {}
  setups = [_setup(ctx, models) for ctx in ctxs]
  first, ctx = setups[0].model, ctxs[0]
  lanes = [pack.Lane(s.model.params, s.batches, s.cfg, str(c.run_dir)) for s, c in zip(setups, ctxs)]
  outcomes = pack.train_lanes(
    graphdef=first.graphdef,
    frozen=first.frozen,
    lanes=lanes,
    mesh=ctx.mesh,
    rules=ctx.rules,
    dev_batches=_dev_batches(ctx),
    description=f"{len(ctxs)} lanes",
    loss_chunk=ctx.loss_chunk,
  )
  return [_finish(c, s, o) for c, s, o in zip(ctxs, setups, outcomes)]
