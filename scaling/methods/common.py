"""What the fine-tuning methods share: the `layers` option and weights that a method re-expresses."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from scaling import mesh as mesh_lib

# A block's projection -> (the submodule that holds it, how many leading axes are its input).
TARGETS = {
  "wq": ("attn", 1),
  "wk": ("attn", 1),
  "wv": ("attn", 1),
  "wo": ("attn", 2),
  "w_up": ("mlp", 1),
  "w_gate": ("mlp", 1),
  "w_down": ("mlp", 1),
}


def check_layers(method: str, layers: Sequence[int] | None, n_layers: int) -> None:
  """Raises ValueError unless `layers` is None or a (first, last + 1) range within the model."""
  if layers is None:
    return
  if len(layers) != 2 or not 0 <= layers[0] < layers[1] <= n_layers:
    raise ValueError(
      f"{method}.layers={tuple(layers)}; allowed: (first, last + 1) with "
      f"0 <= first < last + 1 <= {n_layers} (the model's layers), or None for all"
    )


def block_indices(layers: Sequence[int] | None, n_layers: int) -> range:
  """The indices of the blocks that a method may change."""
  return range(n_layers) if layers is None else range(layers[0], layers[1])


def in_layers(path: tuple, layers: Sequence[int] | None) -> bool:
  """Whether a variable's path lies in the layer range (None: anywhere in the model)."""
  if layers is None:
    return True
  return len(path) > 1 and path[0] == "blocks" and layers[0] <= path[1] < layers[1]


def check_targets(method: str, targets: Sequence[str]) -> None:
  """Raises ValueError unless `targets` is a non-empty list of projection names."""
  if not targets or any(t not in TARGETS for t in targets):
    raise ValueError(f"{method}.targets={tuple(targets)!r}; allowed: a non-empty subset of {list(TARGETS)}")


def check_gate(method: str, targets: Sequence[str], cfg) -> None:
  """Raises ValueError if `targets` names the gate of an MLP that has none."""
  if "w_gate" in targets and cfg.mlp != "swiglu":
    raise ValueError(
      f"{method}.targets includes 'w_gate', which a {cfg.mlp!r} MLP does not have; "
      f"allowed: {[t for t in TARGETS if t != 'w_gate']}"
    )


def replace_weights(
  model: nnx.Module,
  targets: Sequence[str],
  layers: Sequence[int] | None,
  make: Callable[[nnx.Variable, int], nnx.Module],
) -> nnx.Module:
  """Replaces each target projection of the blocks in `layers` by `make(weight, input axes)`."""
  for i in block_indices(layers, len(model.blocks)):
    for target in targets:
      part, in_axes = TARGETS[target]
      holder = getattr(model.blocks[i], part)
      setattr(holder, target, make(getattr(holder, target), in_axes))
  return model


class OnTargets:
  """What the methods that re-express target projections share: checking `targets` and `layers`."""

  name: str
  targets: tuple[str, ...]
  layers: tuple[int, int] | None
  SEQUENCES = ("targets", "layers")

  def __post_init__(self):
    check_targets(self.name, self.targets)

  def check(self, cfg, seq_len: int) -> None:
    """Raises ValueError if the model (trained on `seq_len` tokens) cannot take these options."""
    del seq_len
    check_layers(self.name, self.layers, cfg.n_layers)
    check_gate(self.name, self.targets, cfg)


class Reparameterised(nnx.Module):
  """A weight that a method re-expresses from frozen parts and trained ones: the model reads it as
  `w[...]`, like the nnx.Param that it replaces, and gets the effective weight."""

  def weight(self) -> jax.Array:
    raise NotImplementedError

  def __getitem__(self, index):
    return self.weight()[index]


def _projections(block: nnx.Module) -> list:
  """A block's projection weights (plain or re-expressed), in TARGETS order."""
  weights = [getattr(getattr(block, part), target, None) for target, (part, _) in TARGETS.items()]
  return [w for w in weights if w is not None]


def layer_change(base: nnx.Module, tuned: nnx.Module) -> list[float]:
  """Per block, ||W_tuned - W_base|| / ||W_base|| over its projection weights as the model reads them
  (LoRA and SVF included); a method that wraps the model (prompt, LoReFT) is read through `.model`."""
  (base_def, base_state), (tuned_def, tuned_state) = nnx.split(base), nnx.split(getattr(tuned, "model", tuned))
  return [float(x) for x in mesh_lib.to_host(_changes(base_def, tuned_def, base_state, tuned_state))]


# One program: on several hosts, every process runs the same collectives in it, where a sequence of
# eager operations on global arrays can deadlock. Compiled once per pair of model structures.
@functools.partial(jax.jit, static_argnums=(0, 1))
def _changes(base_def: nnx.GraphDef, tuned_def: nnx.GraphDef, base_state, tuned_state) -> jax.Array:
  before_model, after_model = nnx.merge(base_def, base_state), nnx.merge(tuned_def, tuned_state)
  out = []
  for before, after in zip(before_model.blocks, after_model.blocks):
    pairs = list(zip(_projections(before), _projections(after)))
    moved = sum(jnp.sum(jnp.square(a[...] - b[...])) for b, a in pairs)
    size = sum(jnp.sum(jnp.square(b[...])) for b, _ in pairs)
    out.append(jnp.sqrt(moved / size))
  return jnp.stack(out)
