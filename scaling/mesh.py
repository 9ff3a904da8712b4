"""Device mesh, logical-axis rules, and the one place where logical names become shardings."""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Callable, Iterator, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import AxisType, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis -> mesh axes. Parameters use the plain names; activations the act_ ones, so that
# a weight's embed axis can be FSDP-sharded while the residual stream's is not.
DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
  ("act_batch", ("data", "fsdp")),
  ("act_length", None),
  ("act_embed", None),
  ("act_heads", "tensor"),
  ("act_mlp", "tensor"),
  ("act_vocab", "tensor"),
  ("embed", "fsdp"),
  ("vocab", "tensor"),
  ("heads", "tensor"),
  ("kv_heads", "tensor"),
  ("mlp", "tensor"),
  ("head_dim", None),
)

Rules = Sequence[tuple[str, str | tuple[str, ...] | None]]


def parse_rules(rules: Sequence[Sequence]) -> tuple[tuple[str, str | tuple[str, ...] | None], ...]:
  """Rules from a config or JSON (lists for tuples) as hashable tuples."""
  return tuple((str(name), tuple(axes) if isinstance(axes, (list, tuple)) else axes) for name, axes in rules)


_RULES: contextvars.ContextVar[Rules | None] = contextvars.ContextVar("scaling_rules", default=None)
_MESH: contextvars.ContextVar[jax.sharding.Mesh | None] = contextvars.ContextVar("scaling_mesh", default=None)


def resolve_shape(shape: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
  """Mesh shape over MESH_AXES; one axis may be -1 (all remaining devices).

  A mesh may use fewer devices than there are, if its size divides their number.
  """
  unknown = set(shape) - set(MESH_AXES)
  if unknown:
    raise ValueError(f"mesh.shape has unknown axes {sorted(unknown)}; allowed: {list(MESH_AXES)}")
  sizes = [int(shape.get(a, 1)) for a in MESH_AXES]
  if sizes.count(-1) > 1:
    raise ValueError(f"mesh.shape={dict(shape)}: at most one axis may be -1")
  for axis, size in zip(MESH_AXES, sizes):
    if size == 0 or size < -1:
      raise ValueError(f"mesh.shape.{axis}={size}; allowed: a positive size or -1")
  fixed = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % fixed:
      raise ValueError(f"mesh.shape={dict(shape)}: fixed axes ({fixed}) do not divide the {num_devices} devices")
    sizes[sizes.index(-1)] = num_devices // fixed
  elif num_devices % fixed:
    raise ValueError(
      f"mesh.shape={dict(shape)} spans {fixed} devices, and {fixed} does not divide the {num_devices} devices "
      f"here; allowed: sizes whose product divides {num_devices}"
    )
  return tuple(sizes)


def make_mesh(shape: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """A mesh over (data, fsdp, tensor) with Auto axes: shardings come from the rules, not types."""
  devices = list(devices if devices is not None else jax.devices())
  sizes = resolve_shape(shape, len(devices))
  return jax.make_mesh(
    sizes, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices[: math.prod(sizes)]
  )


@contextlib.contextmanager
def activate(mesh: jax.sharding.Mesh, rules: Rules = DEFAULT_RULES) -> Iterator[None]:
  """Sets the mesh and the logical rules for everything traced inside."""
  tokens = _RULES.set(parse_rules(rules)), _MESH.set(mesh)
  try:
    with jax.set_mesh(mesh):
      yield
  finally:
    _RULES.reset(tokens[0])
    _MESH.reset(tokens[1])


def platform() -> str:
  """The platform that programs traced now are for: the active mesh's devices', else the default backend."""
  # A program compiled ahead of time for a TPU slice is traced on a CPU host (launch.check).
  mesh = _MESH.get()
  return mesh.devices.flat[0].platform if mesh is not None else jax.default_backend()


def spec(names: Sequence[str | None], rules: Rules | None = None) -> PartitionSpec:
  """The mesh PartitionSpec of logical axis names under `rules` (default: the active rules)."""
  rules = rules if rules is not None else (_RULES.get() or DEFAULT_RULES)
  return nn.logical_to_mesh_axes(tuple(names), rules)


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """Sharding constraint on an activation by logical names; a no-op outside `activate`. Inside a
  shard_map, the axes it splits by hand are left out: there, each device holds its own part."""
  mesh = jax.sharding.get_abstract_mesh()
  if _RULES.get() is None or mesh.empty:
    return x
  return jax.lax.with_sharding_constraint(x, without_axes(spec(names), set(mesh.manual_axes)))


def without_axes(partition: PartitionSpec, axes: set[str]) -> PartitionSpec:
  """The spec with the mesh axes `axes` removed from every dimension."""

  def keep(entry):
    kept = tuple(a for a in (entry if isinstance(entry, tuple) else (entry,)) if a is not None and a not in axes)
    return kept[0] if len(kept) == 1 else (kept or None)

  return PartitionSpec(*map(keep, partition))


def state_shardings(state: nnx.State, mesh: jax.sharding.Mesh, rules: Rules) -> dict:
  """NamedShardings (a pure dict) for every Variable of an NNX state, from its logical names."""

  def one(var):
    names = var.get_metadata().get("logical_axes") or (None,) * len(var.shape)
    return NamedSharding(mesh, spec(names, rules))

  return nnx.to_pure_dict(jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable)))


def run_once_options() -> dict | None:
  """XLA options for a program that runs once, such as a model's initialisation: on a CPU, XLA's
  cheapest compile (about a third of the default's time), since running it costs next to nothing."""
  if jax.default_backend() != "cpu":
    return None
  return {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def create_sharded(
  create: Callable[..., nnx.Module], mesh: jax.sharding.Mesh, rules: Rules, *args
) -> tuple[nnx.GraphDef, dict]:
  """Builds a module, `create(*args)`, with every variable born on its shards: (graphdef, pure
  state dict). The arrays in `args` are donated: they may become part of the new state."""
  graphdef, abstract = nnx.split(nnx.eval_shape(create, *args))
  shardings = state_shardings(abstract, mesh, rules)
  build = jax.jit(
    lambda *a: nnx.to_pure_dict(nnx.split(create(*a))[1]),
    out_shardings=shardings,
    donate_argnums=tuple(range(len(args))),
    compiler_options=run_once_options(),
  )
  return graphdef, build(*args)


def batch_sharding(mesh: jax.sharding.Mesh, rules: Rules, ndim: int = 1) -> NamedSharding:
  """Sharding of a (B, ...) input batch: batch over the data axes, the rest replicated (the default
  spec names only the batch axis, so it fits fields of any rank)."""
  return NamedSharding(mesh, spec(("act_batch",) + (None,) * (ndim - 1), rules))


def global_batch(
  rows: Callable[[slice], Mapping[str, np.ndarray]],
  batch_size: int,
  mesh: jax.sharding.Mesh | None = None,
  rules: Rules | None = None,
) -> dict[str, jax.Array]:
  """Global (B, ...) arrays of a batch split over the batch axes (`batch_sharding`), built on each
  host from only the rows that its own devices hold: `rows(slice)` returns those rows of every field.

  The mesh and rules default to the active ones; outside `activate`, the arrays are put on the
  default device.
  """
  mesh, rules = mesh or _MESH.get(), rules or _RULES.get() or DEFAULT_RULES
  if mesh is None:
    return {k: jnp.asarray(v) for k, v in rows(slice(0, batch_size)).items()}
  local: dict[tuple[int, int], Mapping[str, np.ndarray]] = {}
  for index in batch_sharding(mesh, rules, ndim=1).addressable_devices_indices_map((batch_size,)).values():
    start, stop, _ = index[0].indices(batch_size)
    if (start, stop) not in local:  # Devices that split other axes hold the same rows.
      local[start, stop] = rows(slice(start, stop))
  some = next(iter(local.values()))

  def field(name: str) -> jax.Array:
    shape = (batch_size, *some[name].shape[1:])
    return jax.make_array_from_callback(
      shape,
      batch_sharding(mesh, rules, ndim=len(shape)),
      lambda index: local[index[0].indices(batch_size)[:2]][name][(slice(None), *index[1:])],
    )

  return {name: field(name) for name in some}


def to_host(x: jax.Array) -> np.ndarray:
  """The whole value of a (possibly multi-host) array on every host."""
  return np.asarray(
    x if x.is_fully_addressable or x.is_fully_replicated else multihost_utils.process_allgather(x, tiled=True)
  )


def replicated(x, mesh: jax.sharding.Mesh | None = None) -> jax.Array:
  """A host value (the same on every host) as an array replicated over the mesh (default: active)."""
  mesh = mesh or _MESH.get()
  return jnp.asarray(x) if mesh is None else jax.device_put(np.asarray(x), NamedSharding(mesh, PartitionSpec()))


def batch_axes(rules: Rules) -> tuple[str, ...]:
  """The mesh axes that split the batch."""
  axes = spec(("act_batch",), rules)[0]
  return (axes,) if isinstance(axes, str) else tuple(axes or ())
