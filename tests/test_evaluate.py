"""The knowledge / behaviour metrics and the answer-token loss, for one model and for mixtures."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from scaling import decode, evaluate
from scaling import model as model_lib


def _mixture():
  cfg = model_lib.ladder_config("d32l2", vocab_size=64)
  graphdef, params = nnx.split(model_lib.Transformer(cfg, nnx.Rngs(3)))
  return decode.Mixture.single(graphdef, nnx.to_pure_dict(params), {})


def test_answer_metrics_count_right_and_well_formed_answers():
  mixture = _mixture()
  (model,) = mixture.modules()
  prompt = np.asarray([[1, 5, 6, 7, 0, 0, 0, 0]] * 2)
  first = int(jnp.argmax(model(jnp.asarray(prompt[:1, :4]))[0, -1]))
  second = int(jnp.argmax(model(jnp.asarray([[1, 5, 6, 7, first]]))[0, -1]))
  # Example 0's truth is the model's own greedy answer; example 1's truth is something else.
  targets = np.zeros((2, 8), np.int64)
  targets[0, 3], targets[1, 3] = first, (first + 1) % 64
  batch = {"inputs": prompt, "targets": targets, "weights": np.zeros((2, 8)), "prompt_len": np.asarray([4, 4]),
           "answer_len": np.asarray([1, 1]), "attribute": np.asarray([0, 0]), "valid": np.asarray([1.0, 1.0])}
  allowed = {0: np.asarray([first])}
  m = evaluate.answer_metrics(mixture, [batch], allowed, eos=second, max_answer_len=1)
  assert m == {"knowledge": 0.5, "behaviour": 1.0}
  m = evaluate.answer_metrics(mixture, [batch], {0: np.asarray([first + 1])}, eos=second, max_answer_len=1)
  assert m["behaviour"] == 0.0


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
