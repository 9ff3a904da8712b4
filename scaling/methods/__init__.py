"""Fine-tuning methods as plug-ins: which parameters train, how many, and how the model is wrapped.

A method is a frozen dataclass whose fields are its options. It has a `name`, `check(cfg, seq_len)`
that rejects options that a model cannot take, `prepare(model, rngs, tokenizer_size)` that returns
the model to train (for example with adapters around its base weights; the tokenizer's size tells
the model's vocabulary rows that are tokens from its padding, None: all are tokens) and
`trainable`, an NNX filter of the variables that train; everything it leaves out stays frozen at
its base value. The methods that change blocks or their outputs take `layers`, a (first, last + 1)
range of the blocks that they may change (None: all); prompt tuning changes only the input. A prepared model is called as
`model(tokens_BxL, prompt_len_B)` and `model.extend(tokens, positions, cache, prompt_len_B)`:
LoReFT edits prompt positions, the others ignore the prompt lengths. For the training loss,
`model(tokens_BxL, prompt_len_B, hidden=True)` gives the final hidden states and `model.logits(x)`
turns them into logits (so that the loss can make its logits in chunks).

In a study, `finetune.methods` lists names, or dicts of a name and options. An option given as a
tuple is a grid axis (for the options that are sequences themselves, a tuple of tuples), and each
combination is a method of its own, with its own runs. Adding a method is adding one module and
one entry in METHODS.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping
from typing import Any, Protocol

import jax
from flax import nnx

from scaling.methods.full import FullModel
from scaling.methods.lora import Lora
from scaling.methods.prompt import Prompt
from scaling.methods.reft import Reft
from scaling.methods.svf import Svf


class Method(Protocol):
  name: str
  trainable: Any  # An nnx filter.

  def check(self, cfg, seq_len: int) -> None: ...

  def prepare(self, model: nnx.Module, rngs: nnx.Rngs, tokenizer_size: int | None = None) -> nnx.Module: ...


METHODS: dict[str, type] = {"full": FullModel, "lora": Lora, "prompt": Prompt, "reft": Reft, "svf": Svf}

# Options that every method takes, about how it trains rather than what: each overrides the field
# of finetune.train of that name for the method's runs (methods differ in the rates they need).
# A spec holds one only when it is given; labels shorten it.
TRAINING_OPTIONS = {"learning_rate": "lr"}


def get_method(name: str, **options) -> Method:
  """The method of that name with these options (training options are checked and left out);
  errors name the method, option and what is allowed."""
  if name not in METHODS:
    raise ValueError(f"unknown fine-tuning method {name!r}; allowed: {sorted(METHODS)}")
  cls = METHODS[name]
  allowed = [f.name for f in dataclasses.fields(cls)] + list(TRAINING_OPTIONS)
  unknown = sorted(set(options) - set(allowed))
  if unknown:
    raise ValueError(f"{name} has no option {unknown[0]!r}; allowed: {allowed}")
  for key in TRAINING_OPTIONS:
    value = options.pop(key, None)
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
      raise ValueError(f"{name}.{key}={value!r}; allowed: a positive number, or None for finetune.train.{key}")
  sequences = getattr(cls, "SEQUENCES", ())
  return cls(**{k: tuple(v) if k in sequences and v is not None else v for k, v in options.items()})


def training_overrides(spec: Mapping) -> dict:
  """The finetune.train fields that a method spec overrides (its training options that are given)."""
  return {k: spec[k] for k in TRAINING_OPTIONS if spec.get(k) is not None}


def _is_axis(cls: type, option: str, value) -> bool:
  """Whether an option's value lists several values of it (a grid axis) rather than being one."""
  if not isinstance(value, (tuple, list)):
    return False
  if option in getattr(cls, "SEQUENCES", ()):  # Sequence options: an axis is a tuple of sequences.
    return bool(value) and all(isinstance(v, (tuple, list)) or v is None for v in value)
  return True


def expand(entry: str | Mapping) -> list[dict]:
  """Every method spec that a study's `finetune.methods` entry stands for: name and all options."""
  entry = {"name": entry} if isinstance(entry, str) else dict(entry)
  name = entry.pop("name", None)
  if name not in METHODS:
    raise ValueError(f"unknown fine-tuning method {name!r}; allowed: {sorted(METHODS)}")
  axes = {k: list(v) if _is_axis(METHODS[name], k, v) else [v] for k, v in entry.items()}
  specs = []
  for values in itertools.product(*axes.values()):
    options = dict(zip(axes, values))
    method = get_method(name, **options)
    specs.append(
      {
        "name": name,
        **{f.name: _plain(getattr(method, f.name)) for f in dataclasses.fields(method)},
        **training_overrides(options),
      }
    )
  return specs


def _plain(value):
  return list(value) if isinstance(value, tuple) else value  # As JSON holds it.


def from_spec(spec: Mapping) -> Method:
  """The method of a run spec's `method` entry."""
  return get_method(spec["name"], **{k: v for k, v in spec.items() if k != "name"})


def label(spec: Mapping | str) -> str:
  """A short name of a method spec: its name and the options that differ from the defaults (an
  imported fine-tune's method is a label already)."""
  if isinstance(spec, str):
    return spec
  defaults = {f.name: _plain(f.default) for f in dataclasses.fields(METHODS[spec["name"]])}
  parts = [spec["name"]]
  for k, v in spec.items():
    if k != "name" and v != defaults.get(k):
      parts.append(f"{TRAINING_OPTIONS.get(k, k)}{'_'.join(map(str, v)) if isinstance(v, list) else v}")
  return "-".join(parts)


def trainable_count(method: Method, model: nnx.Module) -> int:
  """P: the number of parameters that the method trains on this model."""
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, method.trainable)))
