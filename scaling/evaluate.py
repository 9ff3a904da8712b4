"""Losses and metrics: answer-token loss, knowledge (exact match), behaviour (answer format).

All functions take a `decode.Mixture`: one model (`Mixture.single`), or a weighted product of
models such as an emulated fine-tune. Pure arrays in, numbers out. Under an active mesh, batches
are split over its batch axes and the sums cover every host's examples.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from scaling import decode
from scaling import mesh as mesh_lib


def weighted_cross_entropy(logits_BxLxV: jax.Array, targets_BxL: jax.Array, weights_BxL: jax.Array):
  """(sum of weighted token losses, sum of weights)."""
  losses_BxL = optax.softmax_cross_entropy_with_integer_labels(logits_BxLxV, targets_BxL)
  return (losses_BxL * weights_BxL).sum(), weights_BxL.sum()


@jax.jit
def loss_sums(mixture: decode.Mixture, batch: Mapping[str, jax.Array]):
  """Summed answer-token loss and token count of one batch."""
  logp_BxLxV = decode.log_probs(mixture, batch["inputs"], batch["prompt_len"])
  return weighted_cross_entropy(logp_BxLxV, batch["targets"], batch["weights"])


def mean_loss(mixture: decode.Mixture, batches: Sequence[Mapping]) -> float:
  """Mean loss per scored token over a list of batches."""
  sums = [loss_sums(mixture, device_batch(b)) for b in batches]
  total, count = (float(sum(float(s[i]) for s in sums)) for i in (0, 1))
  return total / max(count, 1.0)


def answer_metrics(mixture: decode.Mixture, batches: Sequence[Mapping], value_ids: Mapping[int, np.ndarray],
                   eos: int, max_answer_len: int) -> dict[str, float]:
  """Knowledge: the greedy answer is the true value. Behaviour: it is a value of the asked
  attribute followed by the end token, right or wrong."""
  exact, formatted, n = 0.0, 0.0, 0.0
  for batch in batches:
    gen_BxT = _greedy_answers(mixture, batch, max_answer_len + 1)
    for i in np.flatnonzero(batch["valid"]):
      start, length = int(batch["prompt_len"][i]), int(batch["answer_len"][i])
      truth = batch["targets"][i, start - 1: start - 1 + length]
      exact += float(np.array_equal(gen_BxT[i, :length], truth))
      # Values are single words; a generated value is well formed if it is one of the attribute's.
      formatted += float(gen_BxT[i, 0] in value_ids[int(batch["attribute"][i])] and gen_BxT[i, 1] == eos)
      n += 1
  return {"knowledge": exact / max(n, 1), "behaviour": formatted / max(n, 1)}


@jax.jit
def _greedy_next(mixture: decode.Mixture, tokens_BxL: jax.Array, prompt_len_B: jax.Array, at_B: jax.Array):
  """The mixture's most likely token after position `at_B` of each row (teacher-forced)."""
  logp_BxLxV = decode.log_probs(mixture, tokens_BxL, prompt_len_B)
  return jnp.argmax(logp_BxLxV[jnp.arange(tokens_BxL.shape[0]), at_B], axis=-1)


def _greedy_answers(mixture: decode.Mixture, batch: Mapping, num_new: int) -> np.ndarray:
  """`num_new` greedy tokens after each row's prompt, (B, num_new).

  Each token is one teacher-forced pass over the row with the tokens so far written after its
  prompt: for answers of a few tokens, one compiled program of the batch's shape serves every
  step, where cached decoding compiles a prefill and a decode step of its own.
  """
  tokens = np.concatenate([batch["inputs"], np.zeros((len(batch["inputs"]), num_new), batch["inputs"].dtype)], 1)
  rows, start = np.arange(len(tokens)), np.asarray(batch["prompt_len"])
  out = np.zeros((len(tokens), num_new), tokens.dtype)
  for t in range(num_new):
    device = mesh_lib.global_batch(lambda part: {"inputs": tokens[part], "prompt_len": start[part],
                                                 "at": start[part] - 1 + t}, len(tokens))
    out[:, t] = mesh_lib.to_host(_greedy_next(mixture, device["inputs"], device["prompt_len"], device["at"]))
    tokens[rows, start + t] = out[:, t]
  return out


def device_batch(batch: Mapping) -> dict:
  """The batch's model inputs split over the active mesh's batch axes; each host builds its part."""
  keys = ("inputs", "targets", "weights", "prompt_len")
  return mesh_lib.global_batch(lambda part: {k: batch[k][part] for k in keys}, len(batch["inputs"]))
