"""Full-model tuning (FMT): every parameter of the base model trains, or every one in `layers`."""

from __future__ import annotations

import dataclasses

from flax import nnx

from scaling.methods import common


@dataclasses.dataclass(frozen=True)
class FullModel:
  """Trains the nnx.Param variables (of the blocks in `layers`, if given); the model is used as it is."""

  layers: tuple[int, int] | None = None

  name = "full"
  SEQUENCES = ("layers",)

  @property
  def trainable(self):
    """An nnx filter: every parameter, or the parameters of the blocks in `layers`."""
    if self.layers is None:
      return nnx.Param
    return lambda path, x: isinstance(x, nnx.Param) and common.in_layers(path, self.layers)

  def check(self, cfg, seq_len: int) -> None:
    """Raises ValueError if the model (trained on `seq_len` tokens) cannot take these options."""
    del seq_len
    common.check_layers(self.name, self.layers, cfg.n_layers)

  def prepare(self, model: nnx.Module, rngs: nnx.Rngs, tokenizer_size: int | None = None) -> nnx.Module:
    del rngs, tokenizer_size
    return model
