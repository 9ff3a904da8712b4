"""The knowledge / behaviour metrics and the answer-token loss, for one model and for mixtures."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from scaling import decode, eft, evaluate
from scaling import model as model_lib


def _mixture():
  cfg = model_lib.ladder_config("d32l2", vocab_size=64)
  graphdef, params = nnx.split(model_lib.Transformer(cfg, nnx.Rngs(3)))
  return decode.Mixture.single(graphdef, nnx.to_pure_dict(params), {})


def test_answer_metrics_count_right_and_well_formed_answers():
  mixture = _mixture()
  (model,) = mixture.modules()
  prompt = np.asarray([[1, 5, 6, 7, 0, 0, 0, 0]] * 2)
  next_V = jax.nn.softmax(model(jnp.asarray(prompt[:1, :4]))[0, -1])
  first = int(jnp.argmax(next_V))
  second = int(jnp.argmax(model(jnp.asarray([[1, 5, 6, 7, first]]))[0, -1]))
  # Example 0's truth is the model's own greedy answer; example 1's truth is something else.
  targets = np.zeros((2, 8), np.int64)
  targets[0, 3], targets[1, 3] = first, (first + 1) % 64
  batch = {
    "inputs": prompt,
    "targets": targets,
    "weights": np.zeros((2, 8)),
    "prompt_len": np.asarray([4, 4]),
    "answer_len": np.asarray([1, 1]),
    "attribute": np.asarray([0, 0]),
    "valid": np.asarray([1.0, 1.0]),
  }
  allowed = {0: np.asarray([first])}
  m = evaluate.answer_metrics(mixture, [batch], allowed, eos=second, max_answer_len=1)
  assert m["knowledge"] == 0.5 and m["behaviour"] == 1.0
  np.testing.assert_allclose(m["value_mass"], next_V[first], rtol=1e-5)
  others = np.asarray([first + 1, first + 2]) % 64
  m = evaluate.answer_metrics(mixture, [batch], {0: others}, eos=second, max_answer_len=1)
  assert m["behaviour"] == 0.0
  # The mass counts every value of the attribute, the greedy answer or not.
  np.testing.assert_allclose(m["value_mass"], next_V[others].sum(), rtol=1e-5)


def test_the_loss_pass_serves_as_the_first_greedy_pass(monkeypatch):
  """Answers given the test loss pass's predictions are the same, one model pass per batch fewer."""
  mixture = _mixture()
  tokens = np.asarray(jax.random.randint(jax.random.key(2), (2, 4, 9), 1, 64))
  batches = [
    {
      "inputs": t[:, :-1],
      "targets": t[:, 1:],
      "weights": np.ones((4, 8), np.float32),
      "prompt_len": np.asarray([3, 4, 2, 5]),
      "answer_len": np.ones(4, int),
      "attribute": np.zeros(4, int),
      "valid": np.ones(4),
    }
    for t in tokens
  ]
  values, loss = {0: np.arange(0, 64, 2)}, evaluate.mean_loss(mixture, batches)
  model_pass, passes = evaluate._models_logits, []
  monkeypatch.setattr(evaluate, "_models_logits", lambda *a: passes.append(1) or model_pass(*a))
  alone = [evaluate._greedy_answers(mixture, b, 2) for b in batches]
  assert len(passes) == 4
  shared_loss, predictions = evaluate.loss_and_predictions(mixture, batches)
  assert shared_loss == loss and len(passes) == 6
  shared = [evaluate._greedy_answers(mixture, b, 2, p) for b, p in zip(batches, predictions)]
  assert len(passes) == 8  # One pass per batch, not two; the first token's log-probabilities come with it.
  for (tokens_a, logp_a), (tokens_s, logp_s) in zip(alone, shared):
    np.testing.assert_array_equal(tokens_s, tokens_a)
    np.testing.assert_allclose(logp_s, logp_a, atol=1e-6)
  one = [evaluate._greedy_answers(mixture, b, 1, p) for b, p in zip(batches, predictions)]
  assert len(passes) == 10  # A single token read off the loss pass: one pass for its log-probabilities.
  np.testing.assert_allclose(np.stack([o[1] for o in one]), np.stack([a[1] for a in alone]), atol=1e-6)
  with_predictions = evaluate.answer_metrics(mixture, batches, values, 0, 1, predictions)
  for name, value in evaluate.answer_metrics(mixture, batches, values, 0, 1).items():
    assert with_predictions[name] == pytest.approx(value, abs=1e-6)


def test_mean_loss_of_one_model_is_its_cross_entropy():
  mixture = _mixture()
  (model,) = mixture.modules()
  tokens = np.asarray(jax.random.randint(jax.random.key(1), (2, 9), 1, 64))
  weights = np.ones((2, 8), np.float32)
  weights[0, :3] = 0.0
  batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "weights": weights, "prompt_len": np.asarray([1, 1])}
  logp = jax.nn.log_softmax(model(jnp.asarray(tokens[:, :-1])))
  expected = -(np.take_along_axis(np.asarray(logp), tokens[:, 1:, None], -1)[..., 0] * weights).sum() / weights.sum()
  assert abs(evaluate.mean_loss(mixture, [batch]) - expected) < 1e-5


def test_loss_ignores_unweighted_tokens():
  logits = jnp.log(jnp.asarray([[[0.5, 0.5], [0.9, 0.1]]]))
  total, count = evaluate.weighted_cross_entropy(logits, jnp.asarray([[0, 1]]), jnp.asarray([[1.0, 0.0]]))
  assert float(count) == 1.0 and float(total) == np.float32(-np.log(0.5))


def test_greedy_answers_need_no_room_after_the_prompt():
  """A batch whose rows end at their prompts is widened for the answer: the same answers."""
  mixture = _mixture()
  prompt = np.asarray([[1, 5, 6, 7, 0, 0, 0, 0]])
  tight = {
    "inputs": prompt[:, :4],
    "targets": np.zeros((1, 4), np.int64),
    "weights": np.zeros((1, 4)),
    "prompt_len": np.asarray([4]),
  }
  roomy = {**tight, "inputs": prompt, "targets": np.zeros((1, 8), np.int64), "weights": np.zeros((1, 8))}
  got = [evaluate._greedy_answers(mixture, b, 3)[0] for b in (tight, roomy)]
  np.testing.assert_array_equal(got[0], got[1])
  assert got[0].shape == (1, 3)


def test_mixtures_share_their_models_programs():
  """An emulated fine-tune of models whose shapes were scored before compiles no model program,
  and its loss is that of the combined distribution."""
  single = _mixture()
  (model,) = single.modules()
  other = nnx.to_pure_dict(
    nnx.state(model_lib.Transformer(model_lib.ladder_config("d32l2", vocab_size=64), nnx.Rngs(4)))
  )
  tokens = np.asarray(jax.random.randint(jax.random.key(2), (2, 9), 1, 64))
  batch = {
    "inputs": tokens[:, :-1],
    "targets": tokens[:, 1:],
    "weights": np.ones((2, 8), np.float32),
    "prompt_len": np.asarray([1, 1]),
  }
  evaluate.mean_loss(single, [batch])
  compiled = evaluate._logits._cache_size()
  g, p = single.graphdefs[0], single.params[0]
  emulated = decode.Mixture.of(
    [decode.Model(g, p, {}), decode.Model(g, other, {}), decode.Model(g, p, {})], eft.weights(0.5)
  )
  loss = evaluate.mean_loss(emulated, [batch])
  assert evaluate._logits._cache_size() == compiled
  logp = np.asarray(decode.log_probs(emulated, jnp.asarray(batch["inputs"])))
  expected = -np.take_along_axis(logp, tokens[:, 1:, None], -1).mean()
  assert abs(loss - expected) < 1e-5


def test_chunked_loss_equals_the_whole_and_never_holds_all_logits():
  k1, k2, k3, k4 = jax.random.split(jax.random.key(0), 4)
  x_BxLxD = jax.random.normal(k1, (4, 64, 16))
  w_DxV = jax.random.normal(k2, (16, 4096)) * 0.3
  targets = jax.random.randint(k3, (4, 64), 0, 4096)
  weights = (jax.random.uniform(k4, (4, 64)) > 0.3).astype(jnp.float32)

  def loss(chunk):
    def total(x, w):
      return evaluate.chunked_cross_entropy(lambda h: h @ w, x, targets, weights, chunk)[0]

    return jax.jit(jax.value_and_grad(total, argnums=(0, 1)))

  whole, (gx, gw) = loss(0)(x_BxLxD, w_DxV)
  for chunk in (3, 8, 64):  # 3 does not divide the 64 positions: the last chunk is padded.
    value, (cx, cw) = loss(chunk)(x_BxLxD, w_DxV)
    np.testing.assert_allclose(value, whole, rtol=1e-5)
    np.testing.assert_allclose(cx, gx, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(cw, gw, rtol=1e-4, atol=1e-6)
  assert evaluate.chunked_cross_entropy(lambda h: h @ w_DxV, x_BxLxD, targets, weights, 8)[1] == weights.sum()
  # The whole loss holds the (4, 64, 4096) float32 logits (4 MiB) and their gradient; chunks of 8
  # positions hold an eighth of them at a time.
  temp = lambda chunk: loss(chunk).lower(x_BxLxD, w_DxV).compile().memory_analysis().temp_size_in_bytes
  assert temp(0) > 4 * 2**20 and temp(8) < temp(0) / 4
