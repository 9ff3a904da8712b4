"""Several fine-tunes trained at once, as lanes of one vmapped program.

K fine-tunes of one base with one method and one set of shapes share one compiled step, one model
build and one dispatch per step. Where the mesh splits the batch over devices that split no weight
(data parallelism), the lanes are split over them instead: each device trains whole lanes and no
step communicates. On an accelerator a device's lanes are vmapped: where a step leaves the device
idle (a small model), K lanes may cost little more than one run (not yet measured), and a lane
that has stopped rides along masked. On a CPU the step is arithmetic, so a device's lanes run one
after another inside the program, each as a run alone (on one device, the same results bit for
bit), and a stopped lane costs nothing; what a pack saves there is the per-run work (see the
docs/performance.md, "Packed fine-tunes"). Each lane keeps its own data (D_f subset and order),
learning rate, early stopping and best parameters, and writes its own metrics.jsonl and
checkpoints in the format of `train.run`, so that a killed pack resumes each lane from its own
last checkpoint.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from scaling import decode, evaluate, train
from scaling import mesh as mesh_lib


@dataclasses.dataclass(frozen=True)
class Lane:
  """One fine-tune of a pack: its parameters, data, settings and run directory."""

  params: Any
  batches: Any  # data.pipeline.StepBatches
  cfg: train.TrainConfig
  run_dir: str


def lane_layout(
  mesh: jax.sharding.Mesh, rules: mesh_lib.Rules, lane_shardings: Any, lanes: int
) -> tuple[tuple[str, ...], int]:
  """(the mesh axes that a pack splits its lanes over, its lane count padded to a multiple of
  their size). The axes are those of the batch (of size > 1) that split no array of a lane: each
  device then trains whole lanes, and no step communicates. Padding lanes never train."""
  used = {
    axis
    for s in jax.tree.leaves(lane_shardings)
    for entry in s.spec
    if entry is not None
    for axis in (entry if isinstance(entry, tuple) else (entry,))
  }
  axes = tuple(a for a in mesh_lib.batch_axes(rules) if mesh.shape[a] > 1 and a not in used)
  width = int(np.prod([mesh.shape[a] for a in axes]))
  return axes, lanes + -lanes % width


def stacked_sharding(sharding: NamedSharding, axes: tuple[str, ...] = ()) -> NamedSharding:
  """The sharding of an array stacked on a leading lane axis: lanes split over `axes`, each lane
  as `sharding` splits it but for those axes."""
  rest = mesh_lib.without_axes(sharding.spec, set(axes))
  return NamedSharding(sharding.mesh, PartitionSpec(axes or None, *rest))


# The tree operations below are each one program, not one per array shape: a pack's few calls of
# each would otherwise compile more programs than its training does.
@jax.jit
def _stacked(trees: Sequence[Any]) -> Any:
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def stack(trees: Sequence[Any], axes: tuple[str, ...] = ()) -> Any:
  """Trees of like arrays -> one tree with a leading lane axis, split over the mesh axes `axes`."""
  return jax.device_put(_stacked(list(trees)), jax.tree.map(lambda x: stacked_sharding(x.sharding, axes), trees[0]))


@jax.jit
def _where(mask_K: jax.Array, new: Any, old: Any) -> Any:
  """Per lane, the new tree where mask, else the old."""
  pick = lambda n, o: jnp.where(mask_K.reshape((-1,) + (1,) * (n.ndim - 1)), n, o)
  return jax.tree.map(pick, new, old)


@jax.jit
def _lane(tree: Any, i: jax.Array) -> Any:
  """Lane i of a lane-stacked tree."""
  return jax.tree.map(lambda x: x[i], tree)


def over_lanes(fn, mesh: jax.sharding.Mesh | None, axes: tuple[str, ...], lane_args: Sequence[bool]):
  """`fn` of lane-stacked arguments (and others, False in `lane_args`), run by each device on the
  lanes it holds when the lanes are split over the mesh axes `axes`; its outputs are lane-stacked."""
  if not axes:
    return fn
  lanes = PartitionSpec(axes)
  return jax.shard_map(
    fn,
    mesh=mesh,
    in_specs=tuple(lanes if a else PartitionSpec() for a in lane_args),
    out_specs=lanes,
    axis_names=set(axes),
    check_vma=False,
  )


def step_fn(
  graphdef: nnx.GraphDef,
  cfg: train.TrainConfig,
  loss_chunk: int = 0,
  backend: str | None = None,
  mesh: jax.sharding.Mesh | None = None,
  axes: tuple[str, ...] = (),
):
  """The jitted train step of every lane at once; lanes not `active` keep their state.

  With the lanes split over mesh `axes` (see `lane_layout`), each device steps its own lanes. On an
  accelerator a device's lanes run in parallel (vmapped), and a stopped lane is computed and its
  result dropped. On a CPU (`backend`, default `mesh.platform()`) there is no parallelism to gain
  inside a device: its lanes run one after another, each at one run's shapes, and a stopped lane
  is skipped. Both are one program and one dispatch per step.
  """

  def one(lr, state, frozen, batch):
    return train.train_step(
      graphdef, train.make_optimizer(dataclasses.replace(cfg, learning_rate=lr)), state, frozen, batch, loss_chunk
    )

  def vmapped(state, frozen, batch, lr_K, active_K):
    new, metrics = jax.vmap(one, in_axes=(0, 0, None, 0))(lr_K, state, frozen, batch)
    return _where(active_K, new, state), metrics

  def in_turn(state, frozen, batch, lr_K, active_K):
    lane = lambda lr, s, b: one(lr, s, frozen, b)
    skipped = jax.tree.map(
      lambda m: jnp.zeros(m.shape, m.dtype), jax.eval_shape(lane, lr_K[0], *_lane((state, batch), 0))[1]
    )
    return jax.lax.map(
      lambda x: jax.lax.cond(x[3], lane, lambda lr, s, b: (s, skipped), *x[:3]), (lr_K, state, batch, active_K)
    )

  local = in_turn if (backend or mesh_lib.platform()) == "cpu" else vmapped
  return jax.jit(over_lanes(local, mesh, axes, (True, False, True, True, True)), donate_argnums=0)


def _dev_loss_fn(graphdef: nnx.GraphDef, mesh: jax.sharding.Mesh, axes: tuple[str, ...]):
  """Summed dev loss and token count of one batch, for every lane's parameters."""
  sums = lambda p, frozen, batch: evaluate.loss_sums(decode.Mixture.single(graphdef, p, frozen), batch)
  return jax.jit(over_lanes(jax.vmap(sums, in_axes=(0, None, None)), mesh, axes, (True, False, False)))


def train_lanes(
  *,
  graphdef: nnx.GraphDef,
  frozen: Mapping,
  lanes: Sequence[Lane],
  mesh: jax.sharding.Mesh,
  rules: mesh_lib.Rules,
  dev_batches: Sequence[Mapping] | None = None,
  description: str = "pack",
  loss_chunk: int = 0,
) -> list[train.TrainOutcome]:
  """Trains every lane (or resumes it from its checkpoint) and returns each lane's outcome, as
  `train.run` would for it alone. The lanes' configs may differ only in the learning rate."""
  t0 = time.time()
  cfg = lanes[0].cfg
  if any(dataclasses.replace(lane.cfg, learning_rate=cfg.learning_rate) != cfg for lane in lanes):
    raise ValueError("the lanes of a pack may differ only in their learning rate")
  k = len(lanes)
  tx = train.make_optimizer(cfg)  # The optimiser state's structure; each lane's rate is its own.
  best = train.early_stopping(cfg, dev_batches, k)
  param_sh = jax.tree.map(lambda x: x.sharding, lanes[0].params)
  axes, width = lane_layout(mesh, rules, (param_sh, jax.tree.map(lambda x: x.sharding, frozen)), k)
  padded = list(lanes) + [lanes[0]] * (width - k)  # Padding lanes: lane 0's, never active.
  pad = lambda mask_K: np.pad(mask_K, (0, width - k))
  state_sh = jax.tree.map(
    lambda s: stacked_sharding(s, axes), train.state_shardings(tx, lanes[0].params, param_sh, mesh)
  )
  params = stack([lane.params for lane in padded], axes)
  state = jax.device_put(
    {
      "step": np.zeros(width, np.int32),
      "params": params,
      "opt": jax.jit(jax.vmap(tx.init), out_shardings=state_sh["opt"])(params),
      "tokens": np.zeros(width, np.float32),
    },
    state_sh,
  )
  best_params = jax.tree.map(jnp.copy, params) if best else None
  run_dirs = [epath.Path(lane.run_dir) for lane in lanes]
  managers = [train.checkpoint_manager(d) for d in run_dirs]
  tree = lambda i: train.checkpoint(_lane(state, i), _lane(best_params, i) if best else None, best, i, mesh)

  for i, manager in enumerate(managers):  # Resume each lane from its own last checkpoint.
    if manager.latest_step() is not None:
      lane_state, lane_best = train.resume(manager, tree(i), best, i, run_dirs[i].name)
      put = lambda stacked, part: jax.tree.map(lambda x, y: x.at[i].set(y), stacked, part)
      state = put(state, lane_state)
      if best:
        best_params = put(best_params, lane_best)
  state = jax.device_put(state, state_sh)  # As the step hands it back: one program.
  if best:
    best_params = jax.device_put(best_params, state_sh["params"])
  lanes_step = step_fn(graphdef, cfg, loss_chunk, mesh=mesh, axes=axes)
  dev_sums = _dev_loss_fn(graphdef, mesh, axes)
  lane_vector = stacked_sharding(NamedSharding(mesh, PartitionSpec()), axes)
  per_lane = lambda values, dtype: jax.device_put(np.asarray(values, dtype), lane_vector)
  lr_K = per_lane([lane.cfg.learning_rate for lane in padded], np.float32)
  lane_batch_sh = stacked_sharding(mesh_lib.batch_sharding(mesh, rules), axes)
  # Every device group evaluates its own lanes on the whole dev set.
  unsplit = lambda x: jax.device_put(x, NamedSharding(mesh, mesh_lib.without_axes(x.sharding.spec, set(axes))))
  dev = [jax.tree.map(unsplit, evaluate.device_batch(b)) for b in dev_batches] if best else []

  def device_batch(at: np.ndarray) -> dict:
    """Every lane's batch of its step `at`, stacked on the lane axis (padding lanes: lane 0's)."""
    rows = [lane.batches.rows(int(s), slice(None)) for lane, s in zip(padded, [*at, *[at[0]] * (width - k)])]
    return jax.device_put(
      {key: np.stack([r[key] for r in rows]) for key in train.BATCH_FIELDS if key in rows[0]}, lane_batch_sh
    )

  def step(active_K: np.ndarray, steps_K: np.ndarray) -> dict:
    nonlocal state, batch
    state, metrics = lanes_step(state, frozen, batch, lr_K, per_lane(pad(active_K), bool))
    batch = device_batch(steps_K)  # Made and sent while this step runs, as in `train.run`.
    return metrics

  def dev_loss() -> np.ndarray:
    sums = [jax.device_get(dev_sums(state["params"], frozen, b)) for b in dev]
    total, count = (np.sum([s[j][:k] for s in sums], 0, np.float64) for j in (0, 1))
    return total / np.maximum(count, 1.0)

  def keep(improved_K: np.ndarray) -> None:
    nonlocal best_params
    best_params = _where(per_lane(pad(improved_K), bool), state["params"], best_params)

  steps = np.asarray(state["step"])[:k].copy()
  batch = device_batch(steps)
  steps, stopped = train.loop(
    cfg, run_dirs, managers, steps, best, description, step=step, dev_loss=dev_loss, keep=keep, tree=tree
  )
  kept = best_params if best else state["params"]
  seconds = (time.time() - t0) / k  # The lanes share the pack's time, as `run.execute_pack` shares its seconds.
  return train.outcomes(
    cfg, steps, stopped, best, lambda i: jax.device_put(_lane(kept, i), param_sh), np.asarray(state["tokens"]), seconds
  )
