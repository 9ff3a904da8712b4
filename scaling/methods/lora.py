"""LoRA (Hu et al. 2021): W + (alpha / r) A B on chosen projections; only A and B train.

A is random and B zero, so at initialisation the model is its base. `merge` folds the adapters
into plain weights, which give the same logits.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from scaling.methods import common


class LoraParam(nnx.Param):
  """An adapter matrix: the only variables that a LoRA fine-tune trains."""


class LoraWeight(common.Reparameterised):
  """A frozen base weight plus its low-rank update (alpha / r) A B."""

  def __init__(self, base: nnx.Param, in_axes: int, rank: int, alpha: float, rngs: nnx.Rngs):
    names = base.get_metadata()["logical_axes"]
    in_shape, out_shape = base.shape[:in_axes], base.shape[in_axes:]
    self.base, self.scale = base, alpha / rank
    std = 1.0 / math.sqrt(math.prod(in_shape))  # Keeps x A of order x, as PEFT's uniform init does.
    self.a = LoraParam(
      std * jax.random.normal(rngs.params(), (*in_shape, rank), jnp.float32), logical_axes=(*names[:in_axes], None)
    )
    self.b = LoraParam(jnp.zeros((rank, *out_shape), jnp.float32), logical_axes=(None, *names[in_axes:]))

  def weight(self) -> jax.Array:
    return self.base[...] + self.scale * jnp.tensordot(self.a[...], self.b[...], axes=1)


@dataclasses.dataclass(frozen=True)
class Lora(common.OnTargets):
  """LoRA of `rank` on the `targets` projections of the blocks in `layers`."""

  rank: int = 8
  alpha: float = 16.0
  targets: tuple[str, ...] = ("wq", "wv")
  layers: tuple[int, int] | None = None

  name = "lora"
  trainable = LoraParam

  def __post_init__(self):
    if not isinstance(self.rank, int) or self.rank < 1:
      raise ValueError(f"lora.rank={self.rank!r}; allowed: a positive integer")
    if self.alpha <= 0:
      raise ValueError(f"lora.alpha={self.alpha!r}; allowed: > 0")
    super().__post_init__()

  def prepare(self, model: nnx.Module, rngs: nnx.Rngs, tokenizer_size: int | None = None) -> nnx.Module:
    del tokenizer_size
    return common.replace_weights(
      model, self.targets, self.layers, lambda w, in_axes: LoraWeight(w, in_axes, self.rank, self.alpha, rngs)
    )


def merge(model: nnx.Module) -> nnx.Module:
  """The model with every adapter folded into a plain weight (in place)."""
  for block in model.blocks:
    for target, (part, _) in common.TARGETS.items():
      holder = getattr(block, part)
      w = getattr(holder, target, None)
      if isinstance(w, LoraWeight):
        setattr(holder, target, nnx.Param(w.weight(), logical_axes=w.base.get_metadata()["logical_axes"]))
  return model
