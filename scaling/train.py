"""One training loop for pretraining and fine-tuning: optax AdamW, orbax checkpoints, resume.

State lives here and only here: the loop owns the step counter, the checkpoint manager and the
metrics file; the step itself is a pure jitted function of (state, frozen params, batch).
Fine-tuning evaluates dev loss every `eval_every` steps and stops after `patience` evaluations
without improvement (or at `max_steps`, which the outcome records), keeping the best parameters.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import tqdm
from etils import epath
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from scaling import decode, evaluate, results, timing
from scaling import mesh as mesh_lib
from scaling.train_config import TrainConfig


@dataclasses.dataclass(frozen=True)
class TrainOutcome:
  """What a finished loop hands back: the kept parameters and how training went."""

  params: Any  # Best-dev parameters if the run evaluated dev loss, else the final ones.
  steps: int
  best_step: int
  best_dev_loss: float | None
  hit_step_cap: bool
  tokens_seen: float  # Scored (non-padding) target tokens trained on.
  seconds: float


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
  """AdamW with linear warmup, then cosine decay or a constant rate; global-norm clipping."""
  warmup = optax.linear_schedule(0.0, cfg.learning_rate, max(cfg.warmup_steps, 1))
  if cfg.schedule == "cosine":
    after = optax.cosine_decay_schedule(
      cfg.learning_rate, max(cfg.max_steps - cfg.warmup_steps, 1), alpha=cfg.min_lr_ratio
    )
  else:
    after = optax.constant_schedule(cfg.learning_rate)
  schedule = optax.join_schedules([warmup, after], [cfg.warmup_steps])
  return optax.chain(
    optax.clip_by_global_norm(cfg.grad_clip), optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay)
  )


# What a train step reads of a batch: prompt lengths for the methods that act at prompt positions.
BATCH_FIELDS = ("inputs", "targets", "weights", "prompt_len")


def train_step(
  graphdef: nnx.GraphDef,
  tx: optax.GradientTransformation,
  state: dict,
  frozen: Mapping,
  batch: Mapping[str, jax.Array],
  loss_chunk: int = 0,
) -> tuple[dict, dict]:
  """One optimiser step on the mean loss of the batch's scored tokens; the loss's logits are made
  `loss_chunk` positions at a time (0: all at once; see `evaluate.chunked_cross_entropy`)."""

  def loss_of(params):
    model = nnx.merge(graphdef, params, frozen)
    x_BxLxD = model(batch["inputs"], batch.get("prompt_len"), hidden=True)
    total, count = evaluate.chunked_cross_entropy(model.logits, x_BxLxD, batch["targets"], batch["weights"], loss_chunk)
    return total / jnp.maximum(count, 1.0), count

  (loss, count), grads = jax.value_and_grad(loss_of, has_aux=True)(state["params"])
  updates, opt = tx.update(grads, state["opt"], state["params"])
  params = optax.apply_updates(state["params"], updates)
  metrics = {"loss": loss, "grad_norm": optax.global_norm(grads), "tokens": count}
  return {"step": state["step"] + 1, "params": params, "opt": opt, "tokens": state["tokens"] + count}, metrics


def state_shardings(
  tx: optax.GradientTransformation, abstract_params: Any, param_shardings: Any, mesh: jax.sharding.Mesh
) -> dict:
  """Shardings of the train state: optimiser moments follow their parameters."""
  replicated = NamedSharding(mesh, PartitionSpec())
  abstract_opt = jax.eval_shape(tx.init, abstract_params)
  opt = optax.tree_map_params(
    tx, lambda _, s: s, abstract_opt, param_shardings, transform_non_params=lambda _: replicated
  )
  return {"step": replicated, "params": param_shardings, "opt": opt, "tokens": replicated}


def jit_step(
  graphdef: nnx.GraphDef,
  tx: optax.GradientTransformation,
  state_sh: dict,
  frozen_sh: Any,
  batch_sh: NamedSharding,
  loss_chunk: int = 0,
):
  """The train step, jitted with fixed shardings and the state donated (also lowered ahead of time)."""
  return jax.jit(
    lambda s, f, b: train_step(graphdef, tx, s, f, b, loss_chunk),
    in_shardings=(state_sh, frozen_sh, batch_sh),
    out_shardings=(state_sh, None),
    donate_argnums=0,
  )


def abstract_state(tx: optax.GradientTransformation, params: Any, state_sh: dict) -> dict:
  """The train state as ShapeDtypeStructs with their shardings, from (abstract) parameters."""
  tree = {
    "step": jax.ShapeDtypeStruct((), jnp.int32),
    "params": params,
    "opt": jax.eval_shape(tx.init, params),
    "tokens": jax.ShapeDtypeStruct((), jnp.float32),
  }
  return _abstract(tree, state_sh)


def restore_latest(manager: ocp.CheckpointManager, like: Any, run: str) -> Any:
  """The manager's latest checkpoint, read onto the shapes, dtypes and shardings of `like`; process
  0 says `resuming <run> from step N`."""
  step = manager.latest_step()
  if jax.process_index() == 0:
    print(f"resuming {run} from step {step}", flush=True)
  abstract = _abstract(like, jax.tree.map(lambda x: x.sharding, like))
  return manager.restore(step, args=ocp.args.StandardRestore(abstract))


def _abstract(tree: Any, shardings: Any) -> Any:
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


class MetricsLog:
  """A run's metric records: JSON lines in metrics.jsonl, the source of truth, and the same records
  in its writers (scaling.metric_writers: TensorBoard's event files, W&B where the run asks). On
  resume from a checkpoint, keeps the lines up to its step; on a start afresh (`resume_step` None),
  none: a rerun's lines are then the lines of a run never stopped. The writers start over from
  the kept lines. Only an `enabled` log (process 0's) writes."""

  def __init__(self, run_dir: epath.Path, resume_step: int | None, enabled: bool):
    self.enabled, self.file, self.writers = enabled, None, []
    if enabled:
      # Imported here: tensorboardX and its protocol buffers (0.6 s) are for the processes that write
      # metrics, not for hosts other than 0, evaluation runs or launchers.
      from scaling import metric_writers

      path = run_dir / "metrics.jsonl"
      lines = path.read_text().splitlines() if path.exists() and resume_step is not None else []
      kept = [record for line in lines if (record := _record_of(line)) is not None and record["step"] <= resume_step]
      self.file = results.appending(path, "".join(map(_line, kept)))
      self.writers = metric_writers.for_run(run_dir)
      for writer in self.writers:
        writer.write(kept)

  def write(self, record: dict) -> None:
    """Appends a record to metrics.jsonl and hands it to the writers."""
    if self.enabled:
      self.file.write(_line(record).encode())
      self.file.flush()
      for writer in self.writers:
        writer.write([record])

  def close(self) -> None:
    """Closes metrics.jsonl and the writers' files and runs."""
    if self.enabled:
      self.file.close()
    for writer in self.writers:
      writer.close()


def _line(record: dict) -> str:
  """A record as a line of metrics.jsonl."""
  return json.dumps(record, sort_keys=True) + "\n"


def _record_of(line: str) -> dict | None:
  """A metrics line's record; None for a line that a killed process left half-written."""
  try:
    record = json.loads(line)
  except ValueError:
    return None
  return record if isinstance(record, dict) and "step" in record else None


@timing.phase("training")
def run(
  *,
  graphdef: nnx.GraphDef,
  params: Any,
  frozen: Mapping,
  batches,
  cfg: TrainConfig,
  run_dir: str,
  mesh: jax.sharding.Mesh,
  rules: mesh_lib.Rules,
  dev_batches: Sequence[Mapping] | None = None,
  description: str = "train",
  loss_chunk: int = 0,
) -> TrainOutcome:
  """Trains from `params` (or from the run's latest checkpoint) and returns the kept parameters.

  `batches.rows(step, part)` must return rows `part` (a slice) of the batch of that step (see
  data.pipeline.StepBatches); each host asks only for its own rows. `params` is donated to the
  first step: the caller must not use it afterwards.
  """
  t0 = time.time()
  run_dir = epath.Path(run_dir)
  tx = make_optimizer(cfg)
  param_sh = jax.tree.map(lambda x: x.sharding, params)
  frozen_sh = jax.tree.map(lambda x: x.sharding, frozen)
  state_sh = state_shardings(tx, params, param_sh, mesh)
  batch_sh = mesh_lib.batch_sharding(mesh, rules)
  step_fn = jit_step(graphdef, tx, state_sh, frozen_sh, batch_sh, loss_chunk)
  init_opt = jax.jit(tx.init, out_shardings=state_sh["opt"])
  early_stopping = cfg.eval_every > 0 and dev_batches is not None

  def dev_loss(p):
    with timing.phase("evaluation"):
      return evaluate.mean_loss(decode.Mixture.single(graphdef, p, frozen), dev_batches)

  # Scalars replicated over the mesh: on several hosts, a host-local array could not be saved.
  scalar = lambda value, dtype: mesh_lib.replicated(np.asarray(value, dtype), mesh)
  state = {"step": scalar(0, np.int32), "params": params, "opt": init_opt(params), "tokens": scalar(0, np.float32)}
  # A copy: `params` belongs to the donated state.
  best = {
    "params": jax.tree.map(jnp.copy, params) if early_stopping else {},
    "dev_loss": scalar(np.inf, np.float32),
    "step": scalar(0, np.int32),
    "bad_evals": scalar(0, np.int32),
  }
  manager = ocp.CheckpointManager(
    run_dir / "ckpt", options=ocp.CheckpointManagerOptions(max_to_keep=1, enable_async_checkpointing=False)
  )
  tree = lambda: {"state": state, "best": best} if early_stopping else {"state": state}
  if manager.latest_step() is not None:
    restored = restore_latest(manager, tree(), run_dir.name)
    state, best = restored["state"], restored.get("best", best)
  start = int(state["step"])
  log = MetricsLog(run_dir, manager.latest_step(), jax.process_index() == 0)

  def evaluate_dev(step: int) -> bool:
    """Records dev loss; returns True when patience has run out."""
    nonlocal best
    loss = dev_loss(state["params"])
    log.write({"step": step, "dev_loss": loss})
    if loss < float(best["dev_loss"]):
      best = {
        "params": jax.tree.map(jnp.copy, state["params"]),
        "dev_loss": scalar(loss, np.float32),
        "step": scalar(step, np.int32),
        "bad_evals": scalar(0, np.int32),
      }
    else:
      best = dict(best, bad_evals=best["bad_evals"] + 1)
    return int(best["bad_evals"]) >= cfg.patience

  stopped = early_stopping and start > 0 and int(best["bad_evals"]) >= cfg.patience
  if early_stopping and start == 0:
    stopped = evaluate_dev(0)

  def device_batch(at: int) -> dict:
    return mesh_lib.global_batch(
      lambda part: {k: v for k, v in batches.rows(at, part).items() if k in BATCH_FIELDS}, cfg.batch_size, mesh, rules
    )

  step = start
  bar = tqdm.tqdm(total=cfg.max_steps, initial=start, desc=description, disable=None, leave=False)
  batch = device_batch(step)
  while not stopped and step < cfg.max_steps:
    state, metrics = step_fn(state, frozen, batch)
    step += 1
    # Step t+1's batch is made and sent while step t runs (dispatch is asynchronous), before the
    # logging, evaluation and checkpoints below wait for step t.
    batch = device_batch(step)
    if step % cfg.log_every == 0 or step == cfg.max_steps:
      metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
      log.write({"step": step, **metrics})
      bar.set_postfix(loss=f"{metrics['loss']:.3f}")
    if early_stopping and (step % cfg.eval_every == 0 or step == cfg.max_steps):
      stopped = evaluate_dev(step)
    if step % cfg.checkpoint_every == 0 or stopped or step == cfg.max_steps:
      with timing.phase("checkpoints"):
        manager.save(step, args=ocp.args.StandardSave(tree()), force=True)
    bar.update(1)
  bar.close()
  manager.wait_until_finished()
  manager.close()
  log.close()
  hit_cap = step >= cfg.max_steps and not stopped
  kept = best["params"] if early_stopping else state["params"]
  return TrainOutcome(
    params=kept,
    steps=step,
    best_step=int(best["step"]) if early_stopping else step,
    best_dev_loss=float(best["dev_loss"]) if early_stopping else None,
    hit_step_cap=hit_cap,
    tokens_seen=float(state["tokens"]),
    seconds=time.time() - t0,
  )


def save_params(params: Any, path: str) -> None:
  """Writes the kept parameters once, atomically (orbax finalises a temporary directory)."""
  with timing.phase("checkpoints"):
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(epath.Path(path), params, force=True)
    checkpointer.wait_until_finished()


def load_params(path: str, abstract_params: Any, shardings: Any) -> Any:
  """Reads parameters saved by `save_params` onto the given shardings."""
  return ocp.StandardCheckpointer().restore(epath.Path(path), _abstract(abstract_params, shardings))
