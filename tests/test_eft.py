"""EFT arithmetic through the general (model, weight) form: no special case for any beta."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from scaling import decode, eft
from scaling import model as model_lib


def _model(size, seed):
  cfg = model_lib.ladder_config(size, vocab_size=64, init_std=0.3)
  graphdef, params = nnx.split(model_lib.Transformer(cfg, nnx.Rngs(seed)))
  return decode.Model(graphdef, nnx.to_pure_dict(params), {})


def _logp(model, tokens):
  return np.asarray(jax.nn.log_softmax(nnx.merge(model.graphdef, model.params)(tokens)))


TOKENS = jnp.asarray(np.random.default_rng(0).integers(1, 64, (3, 10)))


def test_same_size_and_beta_one_scores_as_the_fine_tuned_model():
  base, finetuned = _model("d32l2", 0), _model("d32l2", 1)
  got = decode.log_probs(decode.Mixture.of([base, finetuned, base], eft.weights(1.0)), TOKENS)
  np.testing.assert_allclose(np.asarray(got), _logp(finetuned, TOKENS), atol=2e-5, rtol=0)


def test_beta_zero_scores_as_base_n1():
  base_large, finetuned, base_small = _model("d48l2", 0), _model("d32l2", 1), _model("d32l2", 2)
  got = decode.log_probs(decode.Mixture.of([base_large, finetuned, base_small], eft.weights(0.0)), TOKENS)
  np.testing.assert_allclose(np.asarray(got), _logp(base_large, TOKENS), atol=2e-5, rtol=0)


def test_proxy_tuning_is_logit_arithmetic_and_weights_are_general():
  base_large, finetuned, base_small = _model("d48l2", 0), _model("d32l2", 1), _model("d32l2", 2)
  logits = [nnx.merge(m.graphdef, m.params)(TOKENS) for m in (base_large, finetuned, base_small)]
  proxy = jax.nn.log_softmax(logits[0] + logits[1] - logits[2])
  got = decode.log_probs(decode.Mixture.of([base_large, finetuned, base_small], eft.weights(1.0)), TOKENS)
  np.testing.assert_allclose(np.asarray(got), np.asarray(proxy), atol=2e-5, rtol=0)
  # Any weights: an amplified delta is the same normalised sum.
  amplified = jax.nn.log_softmax(logits[0] + 2.5 * (logits[1] - logits[2]))
  got = decode.log_probs(decode.Mixture.of([base_large, finetuned, base_small], [1.0, 2.5, -2.5]), TOKENS)
  np.testing.assert_allclose(np.asarray(got), np.asarray(amplified), atol=2e-5, rtol=0)
  assert np.allclose(np.exp(np.asarray(got)).sum(-1), 1.0, atol=1e-5)


def test_gap_closed():
  assert eft.gap_closed(0.6, small=0.2, large=1.0) == pytest.approx(0.5)
  assert eft.gap_closed(3.0, small=2.0, large=1.0) == -1.0  # Losses: lower is better, same formula.
  assert np.isnan(eft.gap_closed(0.5, small=0.5, large=0.5))


def test_models_of_one_tokenizer_padded_to_different_widths_combine_over_the_narrowest():
  rng = np.random.default_rng(1)
  narrow, wide = jnp.asarray(rng.normal(size=(2, 5, 64))), jnp.asarray(rng.normal(size=(2, 5, 128)))
  got = eft.combine([wide, narrow], eft.weights(1.0)[:2])
  want = eft.combine([wide[..., :64], narrow], eft.weights(1.0)[:2])
  assert got.shape == (2, 5, 64)
  # The wide model is renormalised over the shared 64 tokens: its padding rows take no mass.
  np.testing.assert_allclose(np.exp(np.asarray(got)).sum(-1), 1.0, atol=1e-5)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6, rtol=0)
