"""SVF (singular value fine-tuning, Transformer^2): W = U diag(s * z) V^T from each target matrix's
SVD; only the vector z trains, one entry per singular value, starting at 1 (the base weights).

What trains is z's change from its start, z - 1, so that weight decay, which pulls what trains
toward 0, pulls z toward 1 (the base weights) and not toward a zero matrix; the released code trains
z with Adam and no decay. Without decay, the steps are those of z itself (the gradients are the
same), up to rounding.

The SVD is taken of the loaded base weights when the method prepares the model.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from scaling.methods import common


class SvfParam(nnx.Param):
  """The change of one matrix's singular values' scales from 1: the only variables that SVF trains."""


class SvdFactor(nnx.Variable):
  """A frozen factor of a base weight's SVD."""


class SvfWeight(common.Reparameterised):
  """A base weight as U diag(s * z) V^T, its input axes flattened into U's rows."""

  def __init__(self, base: nnx.Param, in_axes: int):
    names = base.get_metadata()["logical_axes"]
    self.in_shape, self.out_shape = base.shape[:in_axes], base.shape[in_axes:]
    matrix = base[...].reshape(math.prod(self.in_shape), math.prod(self.out_shape))
    u, s, vt = jnp.linalg.svd(matrix, full_matrices=False)
    # Sharding names only where an axis is whole: the flattened ones stay replicated.
    row = names[0] if in_axes == 1 else None
    col = names[in_axes] if len(self.out_shape) == 1 else None
    self.u, self.s, self.vt = (
      SvdFactor(u, logical_axes=(row, None)),
      SvdFactor(s, logical_axes=(None,)),
      SvdFactor(vt, logical_axes=(None, col)),
    )
    self.dz = SvfParam(jnp.zeros_like(s), logical_axes=(None,))  # z = 1 + dz.

  def weight(self) -> jax.Array:
    matrix = (self.u[...] * (self.s[...] * (1.0 + self.dz[...]))) @ self.vt[...]
    return matrix.reshape(*self.in_shape, *self.out_shape)


@dataclasses.dataclass(frozen=True)
class Svf(common.OnTargets):
  """SVF of the `targets` matrices (default: the MLP's, as the released code does) in `layers`."""

  targets: tuple[str, ...] = ("w_up", "w_gate", "w_down")
  layers: tuple[int, int] | None = None

  name = "svf"
  trainable = SvfParam

  def prepare(self, model: nnx.Module, rngs: nnx.Rngs, tokenizer_size: int | None = None) -> nnx.Module:
    del rngs, tokenizer_size
    return common.replace_weights(model, self.targets, self.layers, SvfWeight)
