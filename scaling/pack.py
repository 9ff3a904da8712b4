"""Several fine-tunes trained at once, as lanes of one vmapped program.

K fine-tunes of one base with one method and one set of shapes share one compiled step, one model
build and one dispatch per step. On an accelerator the lanes are vmapped: where a step leaves the
device idle (a small model), K lanes may cost little more than one run (not yet measured), and a
lane that has stopped rides along masked. On a CPU the step is arithmetic, so the lanes run one
after another inside the program, each exactly as a run alone (the same results, bit for bit), and
a stopped lane costs nothing; what a pack saves there is the per-run work (see the README's "Packed
fine-tunes" benchmark). Each lane keeps its own data (D_f subset and order), learning rate, early
stopping and best parameters, and writes its own metrics.jsonl and checkpoints in the format of
`train.run`, so that a killed pack resumes each lane from its own last checkpoint.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import tqdm
from etils import epath
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from scaling import decode, evaluate, timing, train
from scaling import mesh as mesh_lib


@dataclasses.dataclass(frozen=True)
class Lane:
  """One fine-tune of a pack: its parameters, data, settings and run directory."""

  params: Any
  batches: Any  # data.pipeline.StepBatches
  cfg: train.TrainConfig
  run_dir: str


def lanes_sharding(x: jax.Array | jax.ShapeDtypeStruct) -> NamedSharding:
  """The sharding of `x` stacked on a leading lane axis: lanes unsplit, each lane as `x` is."""
  return NamedSharding(x.sharding.mesh, PartitionSpec(None, *x.sharding.spec))


# The tree operations below are each one program, not one per array shape: a pack's few calls of
# each would otherwise compile more programs than its training does.
@jax.jit
def _stacked(trees: Sequence[Any]) -> Any:
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def stack(trees: Sequence[Any]) -> Any:
  """Trees of like arrays -> one tree with a leading lane axis."""
  return jax.device_put(_stacked(list(trees)), jax.tree.map(lanes_sharding, trees[0]))


@jax.jit
def _where(mask_K: jax.Array, new: Any, old: Any) -> Any:
  """Per lane, the new tree where mask, else the old."""
  pick = lambda n, o: jnp.where(mask_K.reshape((-1,) + (1,) * (n.ndim - 1)), n, o)
  return jax.tree.map(pick, new, old)


@jax.jit
def _lane(tree: Any, i: jax.Array) -> Any:
  """Lane i of a lane-stacked tree."""
  return jax.tree.map(lambda x: x[i], tree)


def step_fn(graphdef: nnx.GraphDef, cfg: train.TrainConfig, loss_chunk: int = 0, backend: str | None = None):
  """The jitted train step of every lane at once; lanes not `active` keep their state.

  On an accelerator the lanes run in parallel (vmapped), and a stopped lane is computed and its
  result dropped. On a CPU (`backend`, default JAX's) there is no parallelism to gain: the lanes
  run one after another inside the program, each at one run's shapes, and a stopped lane is
  skipped. Both are one program and one dispatch per step.
  """

  def one(lr, state, frozen, batch):
    return train.train_step(graphdef, train.make_optimizer(dataclasses.replace(cfg, learning_rate=lr)),
                            state, frozen, batch, loss_chunk)

  def vmapped(state, frozen, batch, lr_K, active_K):
    new, metrics = jax.vmap(one, in_axes=(0, 0, None, 0))(lr_K, state, frozen, batch)
    return _where(active_K, new, state), metrics

  def in_turn(state, frozen, batch, lr_K, active_K):
    lane = lambda lr, s, b: one(lr, s, frozen, b)
    skipped = jax.tree.map(lambda m: jnp.zeros(m.shape, m.dtype),
                           jax.eval_shape(lane, lr_K[0], *_lane((state, batch), 0))[1])
    return jax.lax.map(lambda x: jax.lax.cond(x[3], lane, lambda lr, s, b: (s, skipped), *x[:3]),
                       (lr_K, state, batch, active_K))

  return jax.jit(in_turn if (backend or jax.default_backend()) == "cpu" else vmapped, donate_argnums=0)


def _dev_loss_fn(graphdef: nnx.GraphDef):
  """Summed dev loss and token count of one batch, for every lane's parameters."""
  sums = lambda p, frozen, batch: evaluate.loss_sums(decode.Mixture.single(graphdef, p, frozen), batch)
  return jax.jit(jax.vmap(sums, in_axes=(0, None, None)))


def train_lanes(*, graphdef: nnx.GraphDef, frozen: Mapping, lanes: Sequence[Lane], mesh: jax.sharding.Mesh,
                rules: mesh_lib.Rules, dev_batches: Sequence[Mapping] | None = None,
                description: str = "pack", loss_chunk: int = 0) -> list[train.TrainOutcome]:
  """Trains every lane (or resumes it from its checkpoint) and returns each lane's outcome, as
  `train.run` would for it alone. The lanes' configs may differ only in the learning rate."""
  t0 = time.time()
  cfg = lanes[0].cfg
  if any(dataclasses.replace(lane.cfg, learning_rate=cfg.learning_rate) != cfg for lane in lanes):
    raise ValueError("the lanes of a pack may differ only in their learning rate")
  k = len(lanes)
  tx = train.make_optimizer(cfg)  # The optimiser state's structure; each lane's rate is its own.
  early_stopping = cfg.eval_every > 0 and dev_batches is not None
  params = stack([lane.params for lane in lanes])
  state = {"step": jnp.zeros(k, jnp.int32), "params": params, "opt": jax.jit(jax.vmap(tx.init))(params),
           "tokens": jnp.zeros(k, jnp.float32)}
  best = {"params": jax.tree.map(jnp.copy, params) if early_stopping else {},
          "dev_loss": np.full(k, np.inf, np.float32), "step": np.zeros(k, np.int32), "bad_evals": np.zeros(k, np.int32)}
  managers = [ocp.CheckpointManager(epath.Path(lane.run_dir) / "ckpt", options=ocp.CheckpointManagerOptions(
      max_to_keep=1, enable_async_checkpointing=False)) for lane in lanes]

  def lane_tree(i: int) -> dict:
    """Lane i's checkpoint, as `train.run` writes it."""
    out = {"state": _lane(state, i)}
    if early_stopping:
      out["best"] = {"params": _lane(best["params"], i), **{key: jnp.asarray(best[key][i]) for key in
                                                            ("dev_loss", "step", "bad_evals")}}
    return out

  for i, manager in enumerate(managers):  # Resume each lane from its own last checkpoint.
    if manager.latest_step() is not None:
      restored = train.restore_latest(manager, lane_tree(i))
      put = lambda tree, part: jax.tree.map(lambda x, y: x.at[i].set(y), tree, part)
      state = put(state, restored["state"])
      if early_stopping:
        best["params"] = put(best["params"], restored["best"]["params"])
        for key in ("dev_loss", "step", "bad_evals"):
          best[key][i] = restored["best"][key]
  steps = np.asarray(state["step"]).copy()
  logs = [train.MetricsLog(epath.Path(lane.run_dir) / "metrics.jsonl", int(s), jax.process_index() == 0)
          for lane, s in zip(lanes, steps)]
  lanes_step, dev_sums = step_fn(graphdef, cfg, loss_chunk), _dev_loss_fn(graphdef)
  lr_K = jnp.asarray([lane.cfg.learning_rate for lane in lanes], jnp.float32)
  batch_sh = mesh_lib.batch_sharding(mesh, rules)
  lane_batch_sh = NamedSharding(mesh, PartitionSpec(None, *batch_sh.spec))
  dev = [evaluate.device_batch(b) for b in dev_batches] if early_stopping else []

  def evaluate_dev(due: np.ndarray) -> np.ndarray:
    """Records the dev loss of the lanes `due`; returns which of them ran out of patience."""
    with timing.phase("evaluation"):
      sums = [jax.device_get(dev_sums(state["params"], frozen, b)) for b in dev]
    loss = np.sum([s[0] for s in sums], 0, np.float64) / np.maximum(np.sum([s[1] for s in sums], 0, np.float64), 1.0)
    improved = due & (loss < best["dev_loss"])
    for i in np.flatnonzero(due):
      logs[i].write({"step": int(steps[i]), "dev_loss": float(loss[i])})
    if improved.any():
      best["params"] = _where(jnp.asarray(improved), state["params"], best["params"])
    best["dev_loss"] = np.where(improved, loss, best["dev_loss"]).astype(np.float32)
    best["step"] = np.where(improved, steps, best["step"]).astype(np.int32)
    best["bad_evals"] = np.where(improved, 0, best["bad_evals"] + due).astype(np.int32)
    return due & (best["bad_evals"] >= cfg.patience)

  stopped = early_stopping & (steps > 0) & (best["bad_evals"] >= cfg.patience)
  if early_stopping and (steps == 0).any():
    stopped |= evaluate_dev(steps == 0)

  def device_batch(at: np.ndarray) -> dict:
    """Every lane's batch of its step `at`, stacked on the lane axis."""
    rows = [lane.batches.rows(int(s), slice(None)) for lane, s in zip(lanes, at)]
    return jax.device_put({key: np.stack([r[key] for r in rows]) for key in train.BATCH_FIELDS if key in rows[0]},
                          lane_batch_sh)

  bar = tqdm.tqdm(total=k * cfg.max_steps, initial=int(steps.sum()), desc=description, disable=None, leave=False)
  batch = device_batch(steps)
  with timing.phase("training"):
    while (active := ~stopped & (steps < cfg.max_steps)).any():
      state, metrics = lanes_step(state, frozen, batch, lr_K, jnp.asarray(active))
      steps = steps + active
      batch = device_batch(steps)  # Made and sent while this step runs, as in `train.run`.
      logged = active & ((steps % cfg.log_every == 0) | (steps == cfg.max_steps))
      if logged.any():
        metrics = jax.device_get(metrics)
        for i in np.flatnonzero(logged):
          logs[i].write({"step": int(steps[i]), **{key: float(v[i]) for key, v in metrics.items()}})
      ended = np.zeros(k, bool)
      if early_stopping:
        due = active & (steps % cfg.eval_every == 0)
        if due.any():
          ended = evaluate_dev(due)
          stopped |= ended
      save = active & ((steps % cfg.checkpoint_every == 0) | ended | (steps == cfg.max_steps))
      with timing.phase("checkpoints"):
        for i in np.flatnonzero(save):
          managers[i].save(int(steps[i]), args=ocp.args.StandardSave(lane_tree(i)), force=True)
      bar.update(int(active.sum()))
  bar.close()
  for manager in managers:
    manager.wait_until_finished()
    manager.close()
  kept = best["params"] if early_stopping else state["params"]
  tokens = np.asarray(state["tokens"])
  seconds = time.time() - t0
  return [train.TrainOutcome(params=_lane(kept, i), steps=int(steps[i]),
                             best_step=int(best["step"][i]) if early_stopping else int(steps[i]),
                             best_dev_loss=float(best["dev_loss"][i]) if early_stopping else None,
                             hit_step_cap=bool(steps[i] >= cfg.max_steps and not stopped[i]),
                             tokens_seen=float(tokens[i]), seconds=seconds) for i in range(k)]
