"""One training loop for pretraining and fine-tuning: optax AdamW, orbax checkpoints, resume.

State lives here and only here: the loop owns the step counter, the checkpoint manager and the
metrics file; the step itself is a pure jitted function of (state, frozen params, batch). The loop
(`loop`) trains K lanes: one for a run alone (`run`), several for a pack (`scaling.pack`).
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


@dataclasses.dataclass
class Best:
  """Early stopping's numbers for each of K lanes (one for a run alone), arrays of shape (K,): the
  best dev loss so far, its step, and the evaluations since without a better one. The fields are
  those of a checkpoint's "best" (see `checkpoint`)."""

  dev_loss: np.ndarray  # float32
  step: np.ndarray  # int32
  bad_evals: np.ndarray  # int32

  def record(self, loss_K: np.ndarray, steps_K: np.ndarray, due_K: np.ndarray) -> np.ndarray:
    """Counts the dev losses of the lanes `due`; returns which of them improved on their best."""
    improved_K = due_K & (loss_K < self.dev_loss)
    self.dev_loss = np.where(improved_K, loss_K, self.dev_loss).astype(np.float32)
    self.step = np.where(improved_K, steps_K, self.step).astype(np.int32)
    self.bad_evals = np.where(improved_K, 0, self.bad_evals + due_K).astype(np.int32)
    return improved_K


def early_stopping(cfg: TrainConfig, dev_batches: Sequence[Mapping] | None, lanes: int) -> Best | None:
  """The early-stopping numbers of `lanes` runs that start afresh; None where they evaluate no dev loss."""
  if cfg.eval_every <= 0 or dev_batches is None:
    return None
  return Best(np.full(lanes, np.inf, np.float32), np.zeros(lanes, np.int32), np.zeros(lanes, np.int32))


def checkpoint_manager(run_dir: epath.Path) -> ocp.CheckpointManager:
  """A run's checkpoints: only the latest is kept, and a save is done before training goes on."""
  return ocp.CheckpointManager(
    run_dir / "ckpt", options=ocp.CheckpointManagerOptions(max_to_keep=1, enable_async_checkpointing=False)
  )


def checkpoint(state: dict, best_params: Any, best: Best | None, i: int, mesh: jax.sharding.Mesh) -> dict:
  """The checkpoint of lane i (a run alone: lane 0) of train state `state`: with early stopping,
  its best parameters and numbers too."""
  if best is None:
    return {"state": state}
  # Replicated over the mesh: on several hosts, a host-local array could not be saved.
  numbers = {key: mesh_lib.replicated(value_K[i], mesh) for key, value_K in vars(best).items()}
  return {"state": state, "best": {"params": best_params, **numbers}}


def resume(manager: ocp.CheckpointManager, like: dict, best: Best | None, i: int, run: str) -> tuple[dict, Any]:
  """Lane i's (train state, best parameters) from the manager's latest checkpoint, read onto the
  shapes, dtypes and shardings of `like` (its `checkpoint`); sets its early-stopping numbers in
  `best`. Process 0 says `resuming <run> from step N`."""
  step = manager.latest_step()
  if jax.process_index() == 0:
    print(f"resuming {run} from step {step}", flush=True)
  restored = manager.restore(
    step, args=ocp.args.StandardRestore(_abstract(like, jax.tree.map(lambda x: x.sharding, like)))
  )
  if best is None:
    return restored["state"], None
  for key, value_K in vars(best).items():
    value_K[i] = restored["best"][key]
  return restored["state"], restored["best"]["params"]


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


def _due(cfg: TrainConfig, every: int, steps_K: np.ndarray) -> np.ndarray:
  """Whether each step is on a cadence of `every` steps, which the last step ends."""
  return (steps_K % every == 0) | (steps_K == cfg.max_steps)


@timing.phase("training")
def loop(
  cfg: TrainConfig,
  run_dirs: Sequence[epath.Path],
  managers: Sequence[ocp.CheckpointManager],
  steps_K: np.ndarray,
  best: Best | None,
  description: str,
  *,
  step,
  dev_loss,
  keep,
  tree,
) -> tuple[np.ndarray, np.ndarray]:
  """The training loop of `run` and `pack.train_lanes`: trains K lanes (one for a run alone), from
  their steps `steps_K`, until each runs out of patience or reaches `cfg.max_steps`, and logs,
  evaluates and checkpoints each on the schedule of `cfg`; returns (steps, stopped early) per lane.

  `step(active_K, steps_K)` trains the lanes `active` one step, to `steps_K`, and returns their
  metrics (of K lanes, or of a run alone); `dev_loss()` is each lane's dev loss (K); `keep(improved_K)`
  keeps the improved lanes' parameters as their best; `tree(i)` is lane i's `checkpoint`.
  """
  logs = [MetricsLog(d, m.latest_step(), jax.process_index() == 0) for d, m in zip(run_dirs, managers)]

  def evaluate_dev(due_K: np.ndarray) -> np.ndarray:
    """Records the dev loss of the lanes `due`; returns which of them ran out of patience."""
    with timing.phase("evaluation"):
      loss_K = dev_loss()
    for i in np.flatnonzero(due_K):
      logs[i].write({"step": int(steps_K[i]), "dev_loss": float(loss_K[i])})
    improved_K = best.record(loss_K, steps_K, due_K)
    if improved_K.any():
      keep(improved_K)
    return due_K & (best.bad_evals >= cfg.patience)

  stopped_K = np.zeros(len(steps_K), bool)
  if best:
    stopped_K = (steps_K > 0) & (best.bad_evals >= cfg.patience)
    if (steps_K == 0).any():
      stopped_K |= evaluate_dev(steps_K == 0)
  bar = tqdm.tqdm(
    total=len(steps_K) * cfg.max_steps, initial=int(steps_K.sum()), desc=description, disable=None, leave=False
  )
  while (active_K := ~stopped_K & (steps_K < cfg.max_steps)).any():
    metrics = step(active_K, steps_K + active_K)
    steps_K = steps_K + active_K
    logged_K = active_K & _due(cfg, cfg.log_every, steps_K)
    if logged_K.any():
      # A run alone's metrics are scalars: as lane 0's.
      metrics = {key: np.atleast_1d(v) for key, v in jax.device_get(metrics).items()}
      for i in np.flatnonzero(logged_K):
        logs[i].write({"step": int(steps_K[i]), **{key: float(v[i]) for key, v in metrics.items()}})
      if len(logs) == 1:  # A pack's bar counts the steps of all its lanes; a run's shows its loss.
        bar.set_postfix(loss=f"{float(metrics['loss'][0]):.3f}")
    ended_K = np.zeros(len(steps_K), bool)
    if best and (evaluated_K := active_K & _due(cfg, cfg.eval_every, steps_K)).any():
      ended_K = evaluate_dev(evaluated_K)
    stopped_K |= ended_K
    saved_K = active_K & (_due(cfg, cfg.checkpoint_every, steps_K) | ended_K)
    if saved_K.any():
      with timing.phase("checkpoints"):
        for i in np.flatnonzero(saved_K):
          managers[i].save(int(steps_K[i]), args=ocp.args.StandardSave(tree(i)), force=True)
    bar.update(int(active_K.sum()))
  bar.close()
  for manager, log in zip(managers, logs):
    manager.wait_until_finished()
    manager.close()
    log.close()
  return steps_K, stopped_K


def outcomes(
  cfg: TrainConfig, steps_K: np.ndarray, stopped_K: np.ndarray, best: Best | None, params, tokens_K, seconds: float
) -> list[TrainOutcome]:
  """Each lane's outcome, from `loop`'s steps and stops: `params(i)` are lane i's kept parameters
  and `tokens_K[i]` its tokens seen."""
  return [
    TrainOutcome(
      params=params(i),
      steps=int(steps_K[i]),
      best_step=int(best.step[i]) if best else int(steps_K[i]),
      best_dev_loss=float(best.dev_loss[i]) if best else None,
      hit_step_cap=bool(steps_K[i] >= cfg.max_steps and not stopped_K[i]),
      tokens_seen=float(tokens_K[i]),
      seconds=seconds,
    )
    for i in range(len(steps_K))
  ]


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
  best = early_stopping(cfg, dev_batches, 1)

  # Scalars replicated over the mesh: on several hosts, a host-local array could not be saved.
  scalar = lambda value, dtype: mesh_lib.replicated(np.asarray(value, dtype), mesh)
  state = {"step": scalar(0, np.int32), "params": params, "opt": init_opt(params), "tokens": scalar(0, np.float32)}
  best_params = jax.tree.map(jnp.copy, params) if best else None  # A copy: `params` belongs to the donated state.
  manager = checkpoint_manager(run_dir)
  tree = lambda _: checkpoint(state, best_params, best, 0, mesh)
  if manager.latest_step() is not None:
    state, best_params = resume(manager, tree(0), best, 0, run_dir.name)

  def device_batch(at: int) -> dict:
    return mesh_lib.global_batch(
      lambda part: {k: v for k, v in batches.rows(at, part).items() if k in BATCH_FIELDS}, cfg.batch_size, mesh, rules
    )

  def step(_, steps_K: np.ndarray) -> dict:
    nonlocal state, batch
    state, metrics = step_fn(state, frozen, batch)
    # Step t+1's batch is made and sent while step t runs (dispatch is asynchronous), before the
    # loop's logging, evaluation and checkpoints wait for step t.
    batch = device_batch(int(steps_K[0]))
    return metrics

  def keep(_) -> None:
    nonlocal best_params
    best_params = jax.tree.map(jnp.copy, state["params"])

  batch = device_batch(int(state["step"]))
  steps, stopped = loop(
    cfg,
    [run_dir],
    [manager],
    np.array([int(state["step"])]),
    best,
    description,
    step=step,
    dev_loss=lambda: np.array(
      [evaluate.mean_loss(decode.Mixture.single(graphdef, state["params"], frozen), dev_batches)]
    ),
    keep=keep,
    tree=tree,
  )
  kept = best_params if best else state["params"]
  return outcomes(cfg, steps, stopped, best, lambda _: kept, [state["tokens"]], time.time() - t0)[0]


def save_params(params: Any, path: str) -> None:
  """Writes the kept parameters once, atomically (orbax finalises a temporary directory)."""
  with timing.phase("checkpoints"):
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(epath.Path(path), params, force=True)
    checkpointer.wait_until_finished()


def load_params(path: str, abstract_params: Any, shardings: Any) -> Any:
  """Reads parameters saved by `save_params` onto the given shardings."""
  return ocp.StandardCheckpointer().restore(epath.Path(path), _abstract(abstract_params, shardings))
