"""Scoring and decoding with a KV cache, from one model or a weighted product of models.

A `Mixture` is a list of models with weights; its next-token distribution is
`eft.combine(logits, weights)`. One model with weight 1 is that model, so the fine-tuned runs'
metrics and the EFT runs' metrics are one code path. Prompts are right-padded: each row's prompt
is its first `prompt_len` tokens, and token t of row b is written at position prompt_len[b] + t,
so rows of different lengths decode together. Whatever follows a prompt in its row is never
attended to: the cache is causal by absolute position, and every slot is overwritten before a
later query can see it.

`speculative_generate` drafts k tokens with one model of the mixture and checks them against the
whole mixture in one parallel pass per model (Leviathan et al. 2023; Chen et al. 2023): its
samples follow exactly the mixture's distribution, and its greedy output is the mixture's.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from scaling import eft

Params = Mapping


class Model(NamedTuple):
  """A model as arrays: its graph, the parameters a method trains, and the frozen rest."""

  graphdef: nnx.GraphDef
  params: Params
  frozen: Params

  def module(self) -> nnx.Module:
    """The model as an NNX module (inside a trace: a view of the traced arrays)."""
    return nnx.merge(self.graphdef, self.params, self.frozen)


@functools.partial(
  jax.tree_util.register_dataclass, data_fields=["params", "frozen", "weights"], meta_fields=["graphdefs"]
)
@dataclasses.dataclass(frozen=True)
class Mixture:
  """Models whose log-probabilities are summed with `weights` and renormalised (eft.combine)."""

  graphdefs: tuple[nnx.GraphDef, ...]
  params: tuple[Params, ...]
  frozen: tuple[Params, ...]
  weights: jax.Array  # (M,) float32; traced, so changing a weight does not recompile.

  @classmethod
  def of(cls, models: Sequence[Model], weights: Sequence[float] | jax.Array) -> "Mixture":
    """The weighted product of `models`."""
    weights = jnp.asarray(weights, jnp.float32)
    if weights.shape != (len(models),):
      raise ValueError(f"{len(models)} models need {len(models)} weights, got shape {weights.shape}")
    return cls(
      tuple(m.graphdef for m in models), tuple(m.params for m in models), tuple(m.frozen for m in models), weights
    )

  @classmethod
  def single(cls, graphdef: nnx.GraphDef, params: Params, frozen: Params) -> "Mixture":
    """One model with weight 1: exactly that model's distribution."""
    return cls.of([Model(graphdef, params, frozen)], [1.0])

  def modules(self) -> list[nnx.Module]:
    """The models as NNX modules (inside a trace: views of the traced arrays)."""
    return [nnx.merge(g, p, f) for g, p, f in zip(self.graphdefs, self.params, self.frozen)]


@dataclasses.dataclass(frozen=True)
class Sampling:
  """How a token is chosen: greedy (temperature 0), or sampled after temperature and top-p."""

  temperature: float = 0.0
  top_p: float = 1.0

  def __post_init__(self):
    if not self.temperature >= 0:
      raise ValueError(f"temperature={self.temperature}; allowed: 0 (greedy) or a positive number")
    if not 0 < self.top_p <= 1:
      raise ValueError(f"top_p={self.top_p}; allowed: above 0, at most 1 (1: the whole distribution)")

  @property
  def greedy(self) -> bool:
    return self.temperature == 0.0


GREEDY = Sampling()


def log_probs(mixture: Mixture, tokens_BxL: jax.Array, prompt_len_B: jax.Array | None = None) -> jax.Array:
  """Teacher-forced next-token log-probabilities (B, L, V) of the mixture (`prompt_len_B`: each row's
  prompt length, for methods that act at prompt positions)."""
  return eft.combine([m(tokens_BxL, prompt_len_B) for m in mixture.modules()], mixture.weights)


def warp(logp_xV: jax.Array, sampling: Sampling) -> jax.Array:
  """The normalised distribution that sampling draws from: temperature, then the top-p nucleus."""
  if sampling.greedy:
    return logp_xV
  logp_xV = jax.nn.log_softmax(logp_xV / sampling.temperature, axis=-1)
  if sampling.top_p < 1.0:
    sorted_xV = jnp.sort(logp_xV, axis=-1)[..., ::-1]
    # Keep the smallest prefix of most likely tokens whose mass reaches top_p (at least one).
    before_xV = jnp.cumsum(jnp.exp(sorted_xV), axis=-1) - jnp.exp(sorted_xV)
    cutoff_x1 = jnp.min(jnp.where(before_xV < sampling.top_p, sorted_xV, jnp.inf), axis=-1, keepdims=True)
    logp_xV = jax.nn.log_softmax(jnp.where(logp_xV >= cutoff_x1, logp_xV, -jnp.inf), axis=-1)
  return logp_xV


def pick(logp_BxV: jax.Array, sampling: Sampling, key: jax.Array) -> jax.Array:
  """One token per row: the argmax, or a draw from the warped distribution."""
  if sampling.greedy:
    return jnp.argmax(logp_BxV, axis=-1).astype(jnp.int32)
  return jax.random.categorical(key, warp(logp_BxV, sampling), axis=-1).astype(jnp.int32)


def _extend(
  modules: Sequence[nnx.Module], caches: list, tokens_BxT: jax.Array, positions_BxT: jax.Array, prompt_len_B: jax.Array
) -> tuple[list[jax.Array], list]:
  """Every model's logits of T new tokens, and their updated caches."""
  out = [m.extend(tokens_BxT, positions_BxT, c, prompt_len_B) for m, c in zip(modules, caches)]
  return [logits for logits, _ in out], [cache for _, cache in out]


def _prefill(
  modules: Sequence[nnx.Module], prompts_BxL: jax.Array, prompt_len_B: jax.Array, length: int
) -> tuple[list[jax.Array], list]:
  """Caches of `length` positions holding the prompts (positions 0..L-1), and the prompts' logits."""
  b, seq_len = prompts_BxL.shape
  caches = [m.init_cache(b, length) for m in modules]
  return _extend(modules, caches, prompts_BxL, jnp.broadcast_to(jnp.arange(seq_len), (b, seq_len)), prompt_len_B)


@functools.partial(jax.jit, static_argnames=("num_new", "sampling"))
def generate(
  mixture: Mixture,
  prompts_BxL: jax.Array,
  prompt_len_B: jax.Array,
  key: jax.Array,
  *,
  num_new: int,
  sampling: Sampling = GREEDY,
) -> jax.Array:
  """`num_new` tokens after each row's prompt: (B, num_new); one cached step per token."""
  modules = mixture.modules()
  rows_B = jnp.arange(prompts_BxL.shape[0])
  logits, caches = _prefill(modules, prompts_BxL, prompt_len_B, prompts_BxL.shape[1] + num_new)
  logp_BxV = eft.combine([l_BxLxV[rows_B, prompt_len_B - 1] for l_BxLxV in logits], mixture.weights)

  def step(carry, t):
    caches, logp_BxV = carry
    token_B = pick(logp_BxV, sampling, jax.random.fold_in(key, t))
    logits, caches = _extend(modules, caches, token_B[:, None], (prompt_len_B + t)[:, None], prompt_len_B)
    return (caches, eft.combine([l_BxV[:, 0] for l_BxV in logits], mixture.weights)), token_B

  _, tokens_NxB = jax.lax.scan(step, (caches, logp_BxV), jnp.arange(num_new))
  return tokens_NxB.T


class SpeculativeStats(NamedTuple):
  """Counts of one speculative decode: target passes (batched), drafted and accepted tokens."""

  target_passes: jax.Array
  drafted: jax.Array
  accepted: jax.Array


@functools.partial(jax.jit, static_argnames=("num_new", "k", "draft", "sampling"))
def speculative_generate(
  mixture: Mixture,
  prompts_BxL: jax.Array,
  prompt_len_B: jax.Array,
  key: jax.Array,
  *,
  num_new: int,
  k: int,
  draft: int,
  sampling: Sampling = GREEDY,
) -> tuple[jax.Array, SpeculativeStats]:
  """`generate` with model `draft` of the mixture drafting k tokens per target pass.

  Each round: the draft proposes d_1..d_k from its own distribution q; every model scores the
  pending token and the drafts in one pass of k + 1 positions, giving the mixture's p; draft d_j
  is kept with probability min(1, p(d_j) / q(d_j)) (greedy: while it is p's argmax); at the first
  rejection a token is drawn from normalise(max(0, p - q)) (greedy: p's argmax), and if all are
  kept one more is drawn from p. The draft model shares its cache with its term of the mixture.
  """
  modules = mixture.modules()
  b, prompt_width = prompts_BxL.shape
  width = prompt_width + num_new + k  # The furthest a row still decoding writes: prompt + num_new - 1 + k.
  rows_B, steps_K1 = jnp.arange(b), jnp.arange(k + 1)
  _, caches = _prefill(modules, prompts_BxL, prompt_len_B, width)
  tokens_BxS = jnp.zeros((b, width), jnp.int32).at[:, :prompt_width].set(prompts_BxL.astype(jnp.int32))
  end_B = prompt_len_B + num_new

  def draft_step(carry, j):
    cache, token_B, length_B, round_key = carry
    logits_Bx1xV, cache = modules[draft].extend(token_B[:, None], (length_B - 1 + j)[:, None], cache, prompt_len_B)
    logq_BxV = warp(jax.nn.log_softmax(logits_Bx1xV[:, 0], axis=-1), sampling)
    token_B = pick(logq_BxV, sampling, jax.random.fold_in(round_key, j))
    return (cache, token_B, length_B, round_key), (token_B, logq_BxV)

  def round_(state):
    tokens_BxS, length_B, caches, stats, i = state
    round_key = jax.random.fold_in(key, i)
    pending_B = tokens_BxS[rows_B, length_B - 1]
    (caches[draft], _, _, _), (drafts_KxB, logq_KxBxV) = jax.lax.scan(
      draft_step, (caches[draft], pending_B, length_B, round_key), jnp.arange(k)
    )
    drafts_BxK, logq_BxKxV = drafts_KxB.T, jnp.swapaxes(logq_KxBxV, 0, 1)
    scored_BxK1 = jnp.concatenate([pending_B[:, None], drafts_BxK], axis=1)
    logits, caches = _extend(modules, caches, scored_BxK1, length_B[:, None] - 1 + steps_K1, prompt_len_B)
    logp_BxK1xV = warp(eft.combine(logits, mixture.weights), sampling)
    if sampling.greedy:
      keep_BxK = drafts_BxK == jnp.argmax(logp_BxK1xV[:, :k], axis=-1)
    else:
      p_draft_BxK = jnp.take_along_axis(logp_BxK1xV[:, :k], drafts_BxK[..., None], axis=-1)[..., 0]
      q_draft_BxK = jnp.take_along_axis(logq_BxKxV, drafts_BxK[..., None], axis=-1)[..., 0]
      u_BxK = jax.random.uniform(jax.random.fold_in(round_key, k), (b, k))
      keep_BxK = jnp.log(u_BxK) < p_draft_BxK - q_draft_BxK
    accepted_B = jnp.cumprod(keep_BxK, axis=1).sum(axis=1)
    logp_BxV = logp_BxK1xV[rows_B, accepted_B]
    if sampling.greedy:
      next_B = jnp.argmax(logp_BxV, axis=-1).astype(jnp.int32)
    else:
      # After a rejection at j = accepted, draw from the residual max(0, p - q); after none, from p.
      logq_BxV = logq_BxKxV[rows_B, jnp.minimum(accepted_B, k - 1)]
      residual_BxV = jnp.maximum(jnp.exp(logp_BxV) - jnp.exp(logq_BxV), 0.0)
      use_p_B = (accepted_B == k) | (residual_BxV.sum(-1) <= 0)
      dist_BxV = jnp.where(use_p_B[:, None], jnp.exp(logp_BxV), residual_BxV)
      next_B = jax.random.categorical(jax.random.fold_in(round_key, k + 1), jnp.log(dist_BxV)).astype(jnp.int32)
    new_BxK1 = jnp.where(steps_K1 < accepted_B[:, None], jnp.pad(drafts_BxK, ((0, 0), (0, 1))), next_B[:, None])
    active_B = length_B < end_B
    # Slots past the kept tokens are written too; later rounds overwrite them before they count.
    positions_BxK1 = jnp.where(active_B[:, None], length_B[:, None] + steps_K1, width)  # width: dropped.
    tokens_BxS = tokens_BxS.at[rows_B[:, None], positions_BxK1].set(new_BxK1, mode="drop")
    stats = SpeculativeStats(
      stats.target_passes + 1, stats.drafted + k * active_B.sum(), stats.accepted + (accepted_B * active_B).sum()
    )
    return tokens_BxS, jnp.where(active_B, length_B + accepted_B + 1, length_B), caches, stats, i + 1

  zero = jnp.zeros((), jnp.int32)
  state = (tokens_BxS, prompt_len_B.astype(jnp.int32), caches, SpeculativeStats(zero, zero, zero), zero)
  tokens_BxS, _, _, stats, _ = jax.lax.while_loop(lambda s: jnp.any(s[1] < end_B), round_, state)
  out_BxN = tokens_BxS[rows_B[:, None], prompt_len_B[:, None] + jnp.arange(num_new)]
  return out_BxN, stats
