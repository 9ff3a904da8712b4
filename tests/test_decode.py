"""Cached decoding equals uncached recomputation; speculative EFT decoding equals plain EFT decoding
(greedy: token for token; sampling: in distribution)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from conftest import extend
from flax import nnx

from scaling import decode, eft
from scaling import model as model_lib

PROMPT_LEN = np.asarray([3, 5, 8, 1])


def _model(size="d32l2", vocab=64, seed=3, **block) -> decode.Model:
  cfg = model_lib.ladder_config(size, vocab_size=vocab, init_std=block.pop("init_std", 0.3), **block)
  graphdef, params = nnx.split(model_lib.Transformer(cfg, nnx.Rngs(seed)))
  return decode.Model(graphdef, nnx.to_pure_dict(params), {})


def _prompts(vocab=64):
  # Rows are right-padded with random tokens: decoding must never look past a row's prompt.
  return np.asarray(jax.random.randint(jax.random.key(0), (len(PROMPT_LEN), 10), 1, vocab))


@pytest.mark.parametrize(
  "block",
  [
    {},
    {
      "n_kv_heads": 1,
      "use_bias": True,
      "norm": "layer",
      "mlp": "gelu",
      "rotary_fraction": 0.5,
      "parallel_residual": True,
    },
  ],
)
def test_cached_decoding_equals_uncached_recomputation(block):
  m = _model(**block)
  model = nnx.merge(m.graphdef, m.params)
  prompts, steps = _prompts(), 6
  got = np.asarray(
    decode.generate(decode.Mixture.of([m], [1.0]), prompts, PROMPT_LEN, jax.random.key(0), num_new=steps)
  )
  # The cache's logits, step by step, against a full forward pass over the same tokens.
  cache = model.init_cache(len(PROMPT_LEN), 10 + steps)
  logits, cache = extend(model, jnp.asarray(prompts), jnp.broadcast_to(jnp.arange(10), prompts.shape), cache)
  cached = [logits[np.arange(len(PROMPT_LEN)), PROMPT_LEN - 1]]
  for t in range(steps - 1):
    logits, cache = extend(model, jnp.asarray(got[:, t : t + 1]), jnp.asarray(PROMPT_LEN + t)[:, None], cache)
    cached.append(logits[:, 0])
  # Uncached: one causal forward pass over each row's prompt and generated tokens (right-padded,
  # which causal attention cannot see), read at the position that predicts each step's token.
  seqs = np.zeros((len(PROMPT_LEN), 10 + steps), np.int32)
  for i, n in enumerate(PROMPT_LEN):
    seqs[i, : n + steps] = [*prompts[i, :n], *got[i]]
  full = np.asarray(jax.jit(lambda t: model(t))(jnp.asarray(seqs)))
  for i, n in enumerate(PROMPT_LEN):
    for t in range(steps):
      np.testing.assert_allclose(np.asarray(cached[t][i]), full[i, n - 1 + t], atol=1e-5, rtol=0)
      assert got[i, t] == int(np.argmax(full[i, n - 1 + t]))


def test_sampling_is_seeded_and_top_p_near_zero_is_greedy():
  mixture = decode.Mixture.of([_model()], [1.0])
  prompts = _prompts()
  sample = lambda seed, s: np.asarray(
    decode.generate(mixture, prompts, PROMPT_LEN, jax.random.key(seed), num_new=8, sampling=s)
  )
  hot = decode.Sampling(temperature=1.5)
  assert np.array_equal(sample(1, hot), sample(1, hot))
  assert not np.array_equal(sample(1, hot), sample(2, hot))
  nucleus = decode.Sampling(temperature=1.0, top_p=1e-6)  # Only the most likely token survives.
  assert np.array_equal(sample(5, nucleus), sample(0, decode.GREEDY))


@pytest.mark.parametrize(
  "kwargs, message",
  [
    ({"temperature": -1.0}, "temperature=-1.0; allowed: 0 \\(greedy\\) or a positive number"),
    ({"temperature": 1.0, "top_p": 0.0}, "top_p=0.0; allowed: above 0, at most 1"),
    ({"temperature": 1.0, "top_p": 1.5}, "top_p=1.5; allowed: above 0, at most 1"),
  ],
)
def test_bad_sampling_is_named(kwargs, message):
  with pytest.raises(ValueError, match=message):
    decode.Sampling(**kwargs)


def test_top_p_keeps_the_smallest_nucleus():
  logp = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]]))
  kept = np.exp(np.asarray(decode.warp(logp, decode.Sampling(temperature=1.0, top_p=0.7))))
  np.testing.assert_allclose(kept, [[0.625, 0.375, 0.0, 0.0]], atol=1e-6)


def _eft_mixture(vocab, beta=1.0, base_std=0.3, ft_std=0.3):
  base_large, base_small = (
    _model("d48l2", vocab, seed=1, init_std=base_std),
    _model(vocab=vocab, seed=3, init_std=base_std),
  )
  ft_small = _model(vocab=vocab, seed=2, init_std=ft_std)
  return decode.Mixture.of([base_large, ft_small, base_small], eft.weights(beta))


@pytest.mark.parametrize("k", [1, 3])
def test_speculative_greedy_equals_plain_eft_greedy(k):
  mixture = _eft_mixture(64)
  prompts = _prompts()
  plain = np.asarray(decode.generate(mixture, prompts, PROMPT_LEN, jax.random.key(0), num_new=12))
  spec, stats = decode.speculative_generate(
    mixture, prompts, PROMPT_LEN, jax.random.key(0), num_new=12, k=k, draft=eft.TERMS.index("finetuned_n2")
  )
  np.testing.assert_array_equal(np.asarray(spec), plain)
  assert 0 <= int(stats.accepted) <= int(stats.drafted) and int(stats.target_passes) <= 12


def _exact_joint(mixture, prompt, vocab):
  """The mixture's exact probability of every two-token continuation of `prompt`."""
  pairs = np.asarray(list(itertools.product(range(vocab), repeat=2)))
  seqs = np.concatenate([np.repeat(prompt[None], len(pairs), 0), pairs], axis=1)
  logp = np.asarray(decode.log_probs(mixture, jnp.asarray(seqs[:, :-1])))
  n = len(prompt)
  return np.exp(logp[np.arange(len(pairs)), n - 1, pairs[:, 0]] + logp[np.arange(len(pairs)), n, pairs[:, 1]])


def _chi2_pvalue(samples_Bx2, probs, vocab):
  observed = np.bincount(samples_Bx2[:, 0] * vocab + samples_Bx2[:, 1], minlength=vocab * vocab)
  expected = probs / probs.sum() * len(samples_Bx2)
  big = expected >= 5  # Pool the rare cells, so that the chi-square approximation holds.
  obs = np.append(observed[big], observed[~big].sum())
  exp = np.append(expected[big], expected[~big].sum()).astype(np.float64)
  exp *= obs.sum() / exp.sum()
  return scipy.stats.chisquare(obs, exp).pvalue


@pytest.mark.slow
def test_speculative_sampling_follows_the_eft_distribution():
  vocab, rows = 8, 6000
  # Flatter bases than fine-tune: the draft is close to the target, but not equal to it.
  mixture = _eft_mixture(vocab, beta=1.5, base_std=0.3, ft_std=1.0)
  prompt = np.asarray([1, 4, 2])
  prompts, lens = np.repeat(prompt[None], rows, 0), np.full(rows, len(prompt))
  exact = _exact_joint(mixture, prompt, vocab)
  hot = decode.Sampling(temperature=1.0)
  plain = np.asarray(decode.generate(mixture, prompts, lens, jax.random.key(1), num_new=2, sampling=hot))
  spec, stats = decode.speculative_generate(
    mixture, prompts, lens, jax.random.key(2), num_new=2, k=2, draft=1, sampling=hot
  )
  assert 0.05 < int(stats.accepted) / int(stats.drafted) < 0.95  # Both rules of the test are exercised.
  assert _chi2_pvalue(plain, exact, vocab) > 1e-3
  assert _chi2_pvalue(np.asarray(spec), exact, vocab) > 1e-3
  # The test has power: the draft model's own samples are told apart from the EFT distribution.
  draft_only = decode.Mixture.of([decode.Model(mixture.graphdefs[1], mixture.params[1], mixture.frozen[1])], [1.0])
  drafts = np.asarray(decode.generate(draft_only, prompts, lens, jax.random.key(3), num_new=2, sampling=hot))
  assert _chi2_pvalue(drafts, exact, vocab) < 1e-6
