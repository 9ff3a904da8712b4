"""Fine-tuning methods as plug-ins: which parameters train, how many, and how the model is wrapped.

A method is a small object with a `name`, `prepare(model, rngs)` that returns the model to train
(for example with adapters inserted) and `trainable`, an NNX filter that selects its trainable
variables. Everything the filter leaves out stays frozen at its base value. Adding a method is
adding one module and one entry in METHODS.
"""

from __future__ import annotations

from typing import Any, Protocol

import jax
from flax import nnx

from scaling.methods.full import FullModel


class Method(Protocol):
  name: str
  trainable: Any  # An nnx filter.

  def prepare(self, model: nnx.Module, rngs: nnx.Rngs) -> nnx.Module: ...


METHODS: dict[str, type] = {"full": FullModel}


def get_method(name: str, **options) -> Method:
  """The method plug-in of that name; errors list the methods there are."""
  if name not in METHODS:
    raise ValueError(f"unknown fine-tuning method {name!r}; allowed: {sorted(METHODS)}")
  return METHODS[name](**options)


def trainable_count(method: Method, model: nnx.Module) -> int:
  """P: the number of parameters that the method trains on this model."""
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, method.trainable)))
