"""Full-model tuning (FMT): every parameter of the base model trains."""

from __future__ import annotations

from flax import nnx


class FullModel:
  """Trains all nnx.Param variables; the model is used as it is."""

  name = "full"
  trainable = nnx.Param

  def prepare(self, model: nnx.Module, rngs: nnx.Rngs) -> nnx.Module:
    del rngs
    return model
