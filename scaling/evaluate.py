"""Losses and metrics: answer-token loss, knowledge (exact match), behaviour (answer format).

All functions take the model as (graphdef, params, frozen): pure arrays in, numbers out.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

Params = Mapping


def weighted_cross_entropy(logits_BxLxV: jax.Array, targets_BxL: jax.Array, weights_BxL: jax.Array):
  """(sum of weighted token losses, sum of weights)."""
  losses_BxL = optax.softmax_cross_entropy_with_integer_labels(logits_BxLxV, targets_BxL)
  return (losses_BxL * weights_BxL).sum(), weights_BxL.sum()


@functools.partial(jax.jit, static_argnums=0)
def loss_sums(graphdef: nnx.GraphDef, params: Params, frozen: Params, batch: Mapping[str, jax.Array]):
  """Summed answer-token loss and token count of one batch."""
  logits_BxLxV = nnx.merge(graphdef, params, frozen)(batch["inputs"])
  return weighted_cross_entropy(logits_BxLxV, batch["targets"], batch["weights"])


def mean_loss(graphdef: nnx.GraphDef, params: Params, frozen: Params, batches: Sequence[Mapping]) -> float:
  """Mean loss per scored token over a list of batches."""
  sums = [loss_sums(graphdef, params, frozen, _device_batch(b)) for b in batches]
  total, count = (float(sum(float(s[i]) for s in sums)) for i in (0, 1))
  return total / max(count, 1.0)


@functools.partial(jax.jit, static_argnums=(0, 4))
def greedy_answers(graphdef: nnx.GraphDef, params: Params, frozen: Params, batch: Mapping[str, jax.Array],
                   num_new: int) -> jax.Array:
  """Greedy continuation of each prompt: (B, num_new) tokens.

  Prompts are right-padded and attention is causal, so writing token t at position prompt_len + t
  and re-running the model decodes every example at once without a cache.
  """
  model = nnx.merge(graphdef, params, frozen)
  tokens_BxL = batch["inputs"]
  b = jnp.arange(tokens_BxL.shape[0])
  out = []
  for t in range(num_new):
    pos_B = batch["prompt_len"] + t
    mask_BxL = jnp.arange(tokens_BxL.shape[1])[None, :] < pos_B[:, None]
    tokens_BxL = jnp.where(mask_BxL, tokens_BxL, 0)
    next_B = jnp.argmax(model(tokens_BxL)[b, pos_B - 1], axis=-1).astype(tokens_BxL.dtype)
    tokens_BxL = tokens_BxL.at[b, pos_B].set(next_B)
    out.append(next_B)
  return jnp.stack(out, axis=1)


def answer_metrics(graphdef: nnx.GraphDef, params: Params, frozen: Params, batches: Sequence[Mapping],
                   value_ids: Mapping[int, np.ndarray], eos: int, max_answer_len: int) -> dict[str, float]:
  """Knowledge: the greedy answer is the true value. Behaviour: it is a value of the asked
  attribute followed by the end token, right or wrong."""
  exact, formatted, n = 0.0, 0.0, 0.0
  for batch in batches:
    gen_BxT = np.asarray(greedy_answers(graphdef, params, frozen, _device_batch(batch), max_answer_len + 1))
    for i in np.flatnonzero(batch["valid"]):
      start, length = int(batch["prompt_len"][i]), int(batch["answer_len"][i])
      truth = batch["targets"][i, start - 1: start - 1 + length]
      exact += float(np.array_equal(gen_BxT[i, :length], truth))
      # Values are single words; a generated value is well formed if it is one of the attribute's.
      formatted += float(gen_BxT[i, 0] in value_ids[int(batch["attribute"][i])] and gen_BxT[i, 1] == eos)
      n += 1
  return {"knowledge": exact / max(n, 1), "behaviour": formatted / max(n, 1)}


def _device_batch(batch: Mapping) -> dict:
  keys = ("inputs", "targets", "weights", "prompt_len")
  return {k: jnp.asarray(batch[k]) for k in keys}
