"""Emulated fine-tuning (EFT) arithmetic: pure functions of arrays.

EFT (Mitchell et al. 2023) samples from a base model pretrained at scale N1 plus the behaviour
delta of a model fine-tuned at scale N2:

    log p(y_t | x, y_<t) = log p_base(N1) + beta * (log p_ft(N2) - log p_base(N2)) + const,

renormalised over the vocabulary at every step. The general form is any list of (model, weight)
terms, `log p = normalise(sum_i w_i log_softmax(logits_i))`. Because every term's log-normaliser
is constant over the vocabulary, this equals logit arithmetic after renormalisation, so
proxy-tuning (Liu et al. 2024: logits_base_large + logits_ft_small - logits_base_small) is the
same call with beta = 1, and amplified (beta > 1) or negative weights need nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

# The order of an EFT combination's terms: base at N1, fine-tuned at N2, base at N2.
TERMS = ("base_n1", "finetuned_n2", "base_n2")


def combine(logits: Sequence[jax.Array], weights: jax.Array) -> jax.Array:
  """Normalised log-probabilities `log_softmax(sum_i weights[i] * log_softmax(logits[i]))`, over the
  narrowest model's vocabulary."""
  # Models of one tokenizer may pad it to different widths (Qwen2.5 0.5B: 151,936 rows, 7B: 152,064);
  # rows past the narrowest are padding that no text holds.
  width = min(l_xV.shape[-1] for l_xV in logits)
  total_xV = sum(
    weights[i] * jax.nn.log_softmax(l_xV[..., :width].astype(jnp.float32), axis=-1) for i, l_xV in enumerate(logits)
  )
  return jax.nn.log_softmax(total_xV, axis=-1)


def weights(beta: float | jax.Array) -> jax.Array:
  """Weights of the EFT terms in TERMS order: (1, beta, -beta)."""
  beta = jnp.asarray(beta, jnp.float32)
  return jnp.stack([jnp.ones_like(beta), beta, -beta])


def gap_closed(emulated: float, small: float, large: float) -> float:
  """Proxy-tuning's measure: the fraction of the gap from FT(N2) to FT(N1) that EFT(N1, N2) closes."""
  gap = large - small
  return float("nan") if gap == 0 else (emulated - small) / gap
