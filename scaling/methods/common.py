"""What the fine-tuning methods share: the `layers` option and weights that a method re-expresses."""

from __future__ import annotations

from collections.abc import Sequence

import jax
from flax import nnx


def check_layers(method: str, layers: Sequence[int] | None, n_layers: int) -> None:
  """Raises ValueError unless `layers` is None or a (first, last + 1) range within the model."""
  if layers is None:
    return
  if len(layers) != 2 or not 0 <= layers[0] < layers[1] <= n_layers:
    raise ValueError(f"{method}.layers={tuple(layers)}; allowed: (first, last + 1) with "
                     f"0 <= first < last + 1 <= {n_layers} (the model's layers), or None for all")


def block_indices(layers: Sequence[int] | None, n_layers: int) -> range:
  """The indices of the blocks that a method may change."""
  return range(n_layers) if layers is None else range(layers[0], layers[1])


def in_layers(path: tuple, layers: Sequence[int] | None) -> bool:
  """Whether a variable's path lies in the layer range (None: anywhere in the model)."""
  if layers is None:
    return True
  return len(path) > 1 and path[0] == "blocks" and layers[0] <= path[1] < layers[1]


class Reparameterised(nnx.Module):
  """A weight that a method re-expresses from frozen parts and trained ones: the model reads it as
  `w[...]`, like the nnx.Param that it replaces, and gets the effective weight."""

  def weight(self) -> jax.Array:
    raise NotImplementedError

  def __getitem__(self, index):
    return self.weight()[index]
