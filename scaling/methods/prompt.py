"""Prompt tuning (Lester et al. 2021): `length` learned vectors before every input; only they train.

They start as the embeddings of random tokens of the tokenizer. The model's vocabulary is the
tokenizer's padded to a multiple (scaling.data.tokenizer.padded_vocab_size; an imported checkpoint
pads its own), and no input holds a padding row, so those rows embed nothing. The vectors take
positions 0..length-1 and the input follows them, so the model's logits for the input's own tokens
are all that is returned (and scored). With a key/value cache, every extension writes the prompt's keys and values again
at the cache's first `length` slots, so decoding needs nothing else.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx


class PromptParam(nnx.Param):
  """The prompt vectors: the only variables that prompt tuning trains."""


class PromptTuned(nnx.Module):
  """A model with learned input vectors before every input."""

  def __init__(self, model: nnx.Module, length: int, tokenizer_size: int, rngs: nnx.Rngs):
    self.model, self.length = model, length
    ids = jax.random.randint(rngs.params(), (length,), 0, tokenizer_size)
    self.prompt = PromptParam(jnp.take(model.embed[...], ids, axis=0), logical_axes=(None, "embed"))

  def _run(self, tokens_BxT: jax.Array, positions_BxT: jax.Array, cache, hidden: bool = False):
    b, p = tokens_BxT.shape[0], self.length
    x_BxTxD = self.model.embed_tokens(tokens_BxT)
    prompt_BxPxD = jnp.broadcast_to(self.prompt[...].astype(x_BxTxD.dtype), (b, p, x_BxTxD.shape[-1]))
    positions = jnp.concatenate([jnp.broadcast_to(jnp.arange(p), (b, p)), positions_BxT + p], axis=1)
    out, cache = self.model.forward_embeddings(
      jnp.concatenate([prompt_BxPxD, x_BxTxD], axis=1), positions, cache, hidden=hidden
    )
    return out[:, p:], cache

  def init_cache(self, batch: int, length: int) -> list:
    """The model's cache, with room for the prompt before the `length` positions of the input."""
    return self.model.init_cache(batch, length + self.length)

  def extend(
    self, tokens_BxT: jax.Array, positions_BxT: jax.Array, cache: list, prompt_len_B: jax.Array | None = None
  ) -> tuple[jax.Array, list]:
    """Logits of T new tokens at their positions after the prompt, and the updated cache."""
    del prompt_len_B
    return self._run(tokens_BxT, positions_BxT, cache)

  def __call__(self, tokens_BxL: jax.Array, prompt_len_B: jax.Array | None = None, hidden: bool = False) -> jax.Array:
    del prompt_len_B
    b, seq_len = tokens_BxL.shape
    return self._run(tokens_BxL, jnp.broadcast_to(jnp.arange(seq_len), (b, seq_len)), None, hidden)[0]

  def logits(self, x_BxLxD: jax.Array) -> jax.Array:
    return self.model.logits(x_BxLxD)


@dataclasses.dataclass(frozen=True)
class Prompt:
  """Prompt tuning with `length` vectors (P = length x d_model)."""

  length: int = 20

  name = "prompt"
  trainable = PromptParam

  def __post_init__(self):
    if not isinstance(self.length, int) or self.length < 1:
      raise ValueError(f"prompt.length={self.length!r}; allowed: a positive integer")

  def check(self, cfg, seq_len: int) -> None:
    """Raises ValueError if the prompt is longer than the sequences that it precedes."""
    del cfg
    if self.length > seq_len:
      raise ValueError(
        f"prompt.length={self.length} is longer than the fine-tuning sequence "
        f"(finetune.train.seq_len={seq_len}); allowed: 1 to {seq_len}"
      )

  def prepare(self, model: nnx.Module, rngs: nnx.Rngs, tokenizer_size: int | None = None) -> nnx.Module:
    """The model with a prompt drawn from its first `tokenizer_size` embeddings (None: all of them)."""
    vocab = model.cfg.vocab_size
    size = vocab if tokenizer_size is None else tokenizer_size
    if not 1 <= size <= vocab:
      raise ValueError(f"a tokenizer of {size} tokens for prompt tuning; allowed: 1 to the model's vocabulary, {vocab}")
    return PromptTuned(model, self.length, size, rngs)
