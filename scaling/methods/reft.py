"""LoReFT (Wu et al. 2024): h + R^T (W h + b - R h) on the hidden states after chosen blocks, at
chosen prompt positions; the model's weights stay frozen and only R, W and b train.

R (rank x d) has orthonormal rows by construction: it is the transposed Q factor of an
unconstrained d x rank matrix, so every gradient step keeps it orthonormal. W starts equal to R
and b at zero, so at initialisation the edit is exactly zero and the model is its base. What trains
of W is its change from that start (the start is kept, frozen), so that weight decay, which pulls
what trains toward 0, pulls W toward its start and not toward 0 (the edit h + R^T (b - R h), which
removes h's part in R's subspace); without decay the steps are those of W itself, up to rounding.

`positions` follows pyreft's notation: "l2" edits the last two prompt positions, "f1+l1" the first
and the last. A prompt position is one before the answer (the begin token included), so generated
tokens are never edited, in training and in decoding alike.
"""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
from flax import nnx

from scaling.methods import common

_POSITIONS = re.compile(r"^(?:f(\d+)(?:\+(?=l)|$))?(?:l(\d+))?$")  # f<n>, l<m> or f<n>+l<m>.


class ReftParam(nnx.Param):
  """An intervention's parameters: the only variables that a LoReFT fine-tune trains."""


class ReftStart(nnx.Variable):
  """W's start, R at initialisation: frozen."""


class Intervention(nnx.Module):
  """One layer's low-rank edit of the hidden state, within the subspace that R's rows span."""

  def __init__(self, d_model: int, rank: int, rngs: nnx.Rngs):
    self.basis = ReftParam(jax.random.normal(rngs.params(), (d_model, rank), jnp.float32), logical_axes=("embed", None))
    self.w_start = ReftStart(self.rotation(), logical_axes=(None, "embed"))  # W = R: the identity edit.
    self.dw = ReftParam(jnp.zeros_like(self.w_start[...]), logical_axes=(None, "embed"))  # W = start + dw.
    self.b = ReftParam(jnp.zeros((rank,), jnp.float32), logical_axes=(None,))

  def rotation(self) -> jax.Array:
    """R (rank, d): orthonormal rows."""
    q_DxR, _ = jnp.linalg.qr(self.basis[...])
    return q_DxR.T

  def __call__(self, h_BxLxD: jax.Array, where_BxL: jax.Array) -> jax.Array:
    r_RxD, dt = self.rotation(), h_BxLxD.dtype
    h = h_BxLxD.astype(jnp.float32)
    w_RxD = self.w_start[...] + self.dw[...]
    delta_BxLxR = h @ w_RxD.T + self.b[...] - h @ r_RxD.T
    edited = h + delta_BxLxR @ r_RxD
    return jnp.where(where_BxL[..., None], edited, h).astype(dt)


def parse_positions(positions: str) -> tuple[int, int]:
  """(first, last): how many of the first and last prompt positions "f<n>+l<m>" names."""
  match = _POSITIONS.match(positions) if isinstance(positions, str) else None
  first, last = (int(g or 0) for g in match.groups()) if match else (0, 0)
  if first + last == 0:
    raise ValueError(
      f"reft.positions={positions!r}; allowed: 'f<n>', 'l<m>' or 'f<n>+l<m>' "
      "(the first n and last m prompt positions, not none), e.g. 'l2' or 'f1+l1'"
    )
  return first, last


class ReftModel(nnx.Module):
  """A frozen model whose hidden states after the blocks in `layers` are edited at prompt positions."""

  def __init__(self, model: nnx.Module, rank: int, layers: range, positions: str, rngs: nnx.Rngs):
    self.model, self.first_layer = model, layers.start
    self.interventions = nnx.List([Intervention(model.cfg.d_model, rank, rngs) for _ in layers])
    self.num_first, self.num_last = parse_positions(positions)

  def _where(self, positions_BxT: jax.Array, prompt_len_B: jax.Array) -> jax.Array:
    """Which of these positions are edited: the first and last ones of each row's prompt."""
    end_Bx1 = prompt_len_B[:, None]
    in_prompt = positions_BxT < end_Bx1
    return in_prompt & ((positions_BxT < self.num_first) | (positions_BxT >= end_Bx1 - self.num_last))

  def _edit(self, where_BxT: jax.Array):
    def after_block(i: int, x_BxTxD: jax.Array) -> jax.Array:
      j = i - self.first_layer
      return self.interventions[j](x_BxTxD, where_BxT) if 0 <= j < len(self.interventions) else x_BxTxD

    return after_block

  def init_cache(self, batch: int, length: int) -> list:
    return self.model.init_cache(batch, length)

  def extend(
    self,
    tokens_BxT: jax.Array,
    positions_BxT: jax.Array,
    cache: list | None,
    prompt_len_B: jax.Array | None = None,
    hidden: bool = False,
  ) -> tuple[jax.Array, list | None]:
    """Logits of T new tokens at their positions, and the updated cache (if one is given); the
    tokens at prompt positions are edited."""
    edit = self._edit(self._where(positions_BxT, _required(prompt_len_B)))
    return self.model.forward_embeddings(self.model.embed_tokens(tokens_BxT), positions_BxT, cache, edit, hidden)

  def __call__(self, tokens_BxL: jax.Array, prompt_len_B: jax.Array | None = None, hidden: bool = False) -> jax.Array:
    b, seq_len = tokens_BxL.shape
    return self.extend(tokens_BxL, jnp.broadcast_to(jnp.arange(seq_len), (b, seq_len)), None, prompt_len_B, hidden)[0]

  def logits(self, x_BxLxD: jax.Array) -> jax.Array:
    return self.model.logits(x_BxLxD)


def _required(prompt_len_B):
  if prompt_len_B is None:
    raise ValueError("a LoReFT model edits prompt positions, so it needs each row's prompt_len")
  return prompt_len_B


@dataclasses.dataclass(frozen=True)
class Reft:
  """LoReFT of `rank` after the blocks in `layers`, at the prompt `positions` (P = layers x (2 rank d + rank))."""

  rank: int = 4
  layers: tuple[int, int] | None = None
  positions: str = "l2"

  name = "reft"
  trainable = ReftParam
  SEQUENCES = ("layers",)

  def __post_init__(self):
    if not isinstance(self.rank, int) or self.rank < 1:
      raise ValueError(f"reft.rank={self.rank!r}; allowed: a positive integer")
    parse_positions(self.positions)

  def check(self, cfg, seq_len: int) -> None:
    """Raises ValueError if the model cannot take these options (a rank above its width, a layer out of range)."""
    del seq_len
    common.check_layers(self.name, self.layers, cfg.n_layers)
    if self.rank > cfg.d_model:
      raise ValueError(f"reft.rank={self.rank} exceeds the model width {cfg.d_model}; allowed: 1 to {cfg.d_model}")

  def prepare(self, model: nnx.Module, rngs: nnx.Rngs, tokenizer_size: int | None = None) -> nnx.Module:
    del tokenizer_size
    return ReftModel(model, self.rank, common.block_indices(self.layers, model.cfg.n_layers), self.positions, rngs)
