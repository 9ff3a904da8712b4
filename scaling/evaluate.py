"""Losses and metrics: answer-token loss, knowledge (exact match), behaviour (answer format), and
greedy answers to score as text.

All functions take a `decode.Mixture`: one model (`Mixture.single`), or a weighted product of
models such as an emulated fine-tune. Pure arrays in, numbers out. Under an active mesh, batches
are split over its batch axes and the sums cover every host's examples.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from scaling import decode, eft
from scaling import mesh as mesh_lib


def weighted_cross_entropy(logits_BxLxV: jax.Array, targets_BxL: jax.Array, weights_BxL: jax.Array):
  """(sum of weighted token losses, sum of weights)."""
  losses_BxL = optax.softmax_cross_entropy_with_integer_labels(logits_BxLxV, targets_BxL)
  return (losses_BxL * weights_BxL).sum(), weights_BxL.sum()


def chunked_cross_entropy(
  logits_fn: Callable[[jax.Array], jax.Array],
  x_BxLxD: jax.Array,
  targets_BxL: jax.Array,
  weights_BxL: jax.Array,
  chunk: int,
):
  """`weighted_cross_entropy` of `logits_fn(x)`, `chunk` positions at a time (0: all at once); a
  chunk's logits are recomputed for the backward pass, so the (B, L, V) logits never exist whole."""
  seq_len = x_BxLxD.shape[1]
  if not chunk or chunk >= seq_len:
    return weighted_cross_entropy(logits_fn(x_BxLxD), targets_BxL, weights_BxL)
  pad = -seq_len % chunk  # Padded positions weigh 0.
  split = lambda a: jnp.moveaxis(
    jnp.pad(a, [(0, 0), (0, pad)] + [(0, 0)] * (a.ndim - 2)).reshape(a.shape[0], -1, chunk, *a.shape[2:]), 1, 0
  )

  @jax.checkpoint
  def add_chunk(total, chunk_of):
    x_BxCxD, targets_BxC, weights_BxC = chunk_of
    return total + weighted_cross_entropy(logits_fn(x_BxCxD), targets_BxC, weights_BxC)[0], None

  chunks = (split(x_BxLxD), split(targets_BxL), split(weights_BxL))
  total, _ = jax.lax.scan(add_chunk, jnp.zeros((), jnp.float32), chunks)
  return total, weights_BxL.sum()


def loss_sums(mixture: decode.Mixture, batch: Mapping[str, jax.Array]):
  """Summed answer-token loss and token count of one batch (a pure function, for callers' own jits)."""
  logp_BxLxV = decode.log_probs(mixture, batch["inputs"], batch["prompt_len"])
  return weighted_cross_entropy(logp_BxLxV, batch["targets"], batch["weights"])


@functools.partial(jax.jit, static_argnums=0)
def _logits(graphdef: nnx.GraphDef, params, frozen, tokens_BxL: jax.Array, prompt_len_B: jax.Array) -> jax.Array:
  """One model's teacher-forced logits (B, L, V)."""
  return nnx.merge(graphdef, params, frozen)(tokens_BxL, prompt_len_B)


@jax.jit
def _combined_scores(
  logits: tuple[jax.Array, ...], mixture_weights: jax.Array, targets_BxL: jax.Array, weights_BxL: jax.Array
):
  """The mixture's loss sums and most likely tokens, from its models' logits."""
  logp_BxLxV = eft.combine(logits, mixture_weights)
  total, count = weighted_cross_entropy(logp_BxLxV, targets_BxL, weights_BxL)
  return total, count, jnp.argmax(logp_BxLxV, axis=-1)


@jax.jit
def _first_answer_log_probs(logits: tuple[jax.Array, ...], mixture_weights: jax.Array, prompt_len_B: jax.Array):
  """The mixture's log-probabilities (B, V) of each row's first answer token, from its models' logits."""
  at_prompt_end = lambda l_BxLxV: l_BxLxV[jnp.arange(l_BxLxV.shape[0]), prompt_len_B - 1]  # noqa: E731
  return eft.combine(tuple(map(at_prompt_end, logits)), mixture_weights)


def _models_logits(mixture: decode.Mixture, batch: Mapping[str, jax.Array]) -> tuple[jax.Array, ...]:
  """Each model's logits (B, L, V) of the batch, each model in a program of its own.

  Every mixture holding a model of that shape shares its program: a study's emulated fine-tunes,
  one mixture per pair of sizes, compile no model program that its fine-tunes have not compiled.
  """
  return tuple(
    _logits(g, p, f, batch["inputs"], batch["prompt_len"])
    for g, p, f in zip(mixture.graphdefs, mixture.params, mixture.frozen)
  )


def scores(mixture: decode.Mixture, batch: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(summed answer-token loss, token count, each position's most likely token (B, L)) of one batch."""
  return _combined_scores(_models_logits(mixture, batch), mixture.weights, batch["targets"], batch["weights"])


def mean_loss(mixture: decode.Mixture, batches: Sequence[Mapping]) -> float:
  """Mean loss per scored token over a list of batches."""
  return _mean([scores(mixture, device_batch(b)) for b in batches])


def loss_and_predictions(mixture: decode.Mixture, batches: Sequence[Mapping]) -> tuple[float, list[np.ndarray]]:
  """`mean_loss`, and each batch's most likely token at every position (B, L) of the same pass."""
  per_batch = [scores(mixture, device_batch(b)) for b in batches]
  return _mean(per_batch), [mesh_lib.to_host(s[2]) for s in per_batch]


def _mean(per_batch: Sequence[tuple[jax.Array, ...]]) -> float:
  total, count = (float(sum(float(s[i]) for s in per_batch)) for i in (0, 1))
  return total / max(count, 1.0)


def answer_metrics(
  mixture: decode.Mixture,
  batches: Sequence[Mapping],
  value_ids: Mapping[int, np.ndarray],
  eos: int,
  max_answer_len: int,
  predictions: Sequence[np.ndarray] | None = None,
) -> dict[str, float]:
  """Knowledge: the greedy answer is the true value. Behaviour: it is a value of the asked
  attribute followed by the end token, right or wrong. Value mass: the probability that the first
  answer token is a value of the asked attribute, greedy or not (how far the model can be asked in
  the prompt's format at all). `predictions`, the batches' most likely tokens from
  `loss_and_predictions`, spare the first greedy pass."""
  exact, formatted, mass, n = 0.0, 0.0, 0.0, 0.0
  for j, batch in enumerate(batches):
    gen_BxT, first_BxV = _greedy_answers(
      mixture, batch, max_answer_len + 1, None if predictions is None else predictions[j]
    )
    for i in np.flatnonzero(batch["valid"]):
      start, length = int(batch["prompt_len"][i]), int(batch["answer_len"][i])
      truth = batch["targets"][i, start - 1 : start - 1 + length]
      values = value_ids[int(batch["attribute"][i])]
      exact += float(np.array_equal(gen_BxT[i, :length], truth))
      # Values are single words; a generated value is well formed if it is one of the attribute's.
      formatted += float(gen_BxT[i, 0] in values and gen_BxT[i, 1] == eos)
      mass += float(np.exp(first_BxV[i, values].astype(np.float64)).sum())
      n += 1
  return {"knowledge": exact / max(n, 1), "behaviour": formatted / max(n, 1), "value_mass": mass / max(n, 1)}


def _greedy_answers(
  mixture: decode.Mixture, batch: Mapping, num_new: int, predictions_BxL: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
  """`num_new` greedy tokens after each row's prompt, (B, num_new), and the log-probabilities of the
  first of them, (B, V).

  Each token is one teacher-forced pass over the row with the tokens so far written after its
  prompt, by the programs that score the batch's loss: the batch's own width serves where it has
  room after every prompt (as for answers it holds), so answers compile no program of their own.
  The first pass reads the batch as it is, so the loss pass's `predictions_BxL` serve for it. At a
  prompt's last position every pass sees the prompt alone, so the first pass that runs gives the
  first token's log-probabilities.
  """
  inputs, start = np.asarray(batch["inputs"]), np.asarray(batch["prompt_len"])
  width = max(inputs.shape[1], int(start.max()) + num_new - 1)
  tokens = np.pad(inputs, ((0, 0), (0, width - inputs.shape[1])))
  unscored = {k: np.zeros((len(tokens), width), np.asarray(batch[k]).dtype) for k in ("targets", "weights")}
  rows, out = np.arange(len(tokens)), np.zeros((len(tokens), num_new), tokens.dtype)
  first_BxV = None

  def one_pass() -> np.ndarray:
    """The most likely token at every position of the rows as written so far, (B, L)."""
    nonlocal first_BxV
    device = device_batch({"inputs": tokens, "prompt_len": start, **unscored})
    logits = _models_logits(mixture, device)
    if first_BxV is None:
      first_BxV = mesh_lib.to_host(_first_answer_log_probs(logits, mixture.weights, device["prompt_len"]))
    return mesh_lib.to_host(_combined_scores(logits, mixture.weights, device["targets"], device["weights"])[2])

  for t in range(num_new):
    if t == 0 and predictions_BxL is not None and width == inputs.shape[1]:
      best_BxL = predictions_BxL  # The same program on the same tokens: the same argmax.
    else:
      best_BxL = one_pass()
    out[:, t] = best_BxL[rows, start - 1 + t]
    if t + 1 < num_new:
      tokens[rows, start + t] = out[:, t]
  if first_BxV is None:  # One token, read off the loss pass: a pass for its log-probabilities.
    one_pass()
  return out, first_BxV


def generate_answers(mixture: decode.Mixture, batch: Mapping, num_new: int) -> np.ndarray:
  """`num_new` greedy tokens after each row's prompt, (B, num_new), by cached decoding (`decode.generate`).

  For answers of many tokens: one pass over the prompts, then one cached step per token, where
  `_greedy_answers` passes over every row's whole width once per token (N times the work for N
  tokens) but compiles nothing beyond the loss's programs.
  """
  rows = device_batch(batch)
  key = mesh_lib.replicated(jax.random.PRNGKey(0))  # Greedy decoding draws nothing.
  return mesh_lib.to_host(decode.generate(mixture, rows["inputs"], rows["prompt_len"], key, num_new=num_new))


def device_batch(batch: Mapping) -> dict:
  """The batch's model inputs split over the active mesh's batch axes; each host builds its part."""
  keys = ("inputs", "targets", "weights", "prompt_len")
  return mesh_lib.global_batch(lambda part: {k: batch[k][part] for k in keys}, len(batch["inputs"]))
