"""Greedy decoding and the knowledge / behaviour metrics."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from scaling import evaluate
from scaling import model as model_lib


def _model():
  cfg = model_lib.ladder_config("d32l2", vocab_size=64)
  graphdef, params = nnx.split(model_lib.Transformer(cfg, nnx.Rngs(3)))
  return graphdef, nnx.to_pure_dict(params)


def test_batched_greedy_matches_one_by_one_decoding():
  graphdef, params = _model()
  model = nnx.merge(graphdef, params)
  tokens = np.asarray(jax.random.randint(jax.random.key(0), (3, 12), 1, 64))
  prompt_len = np.asarray([3, 5, 8])
  batch = {"inputs": tokens, "targets": tokens, "weights": np.zeros((3, 12)), "prompt_len": prompt_len}
  got = np.asarray(evaluate.greedy_answers(graphdef, params, {}, batch, 3))
  for i in range(3):
    seq = list(tokens[i, : prompt_len[i]])
    for t in range(3):
      nxt = int(jnp.argmax(model(jnp.asarray([seq]))[0, -1]))
      assert got[i, t] == nxt
      seq.append(nxt)


def test_answer_metrics_count_right_and_well_formed_answers():
  graphdef, params = _model()
  model = nnx.merge(graphdef, params)
  prompt = np.asarray([[1, 5, 6, 7, 0, 0, 0, 0]] * 2)
  first = int(jnp.argmax(model(jnp.asarray(prompt[:1, :4]))[0, -1]))
  # Example 0's truth is the model's own greedy answer; example 1's truth is something else.
  targets = np.zeros((2, 8), np.int64)
  targets[0, 3], targets[1, 3] = first, (first + 1) % 64
  batch = {"inputs": prompt, "targets": targets, "weights": np.zeros((2, 8)), "prompt_len": np.asarray([4, 4]),
           "answer_len": np.asarray([1, 1]), "attribute": np.asarray([0, 0]), "valid": np.asarray([1.0, 1.0])}
  second = int(np.asarray(evaluate.greedy_answers(graphdef, params, {}, batch, 2))[0, 1])
  allowed = {0: np.asarray([first])}
  m = evaluate.answer_metrics(graphdef, params, {}, [batch], allowed, eos=second, max_answer_len=1)
  assert m == {"knowledge": 0.5, "behaviour": 1.0}
  m = evaluate.answer_metrics(graphdef, params, {}, [batch], {0: np.asarray([first + 1])}, eos=second,
                              max_answer_len=1)
  assert m["behaviour"] == 0.0


def test_loss_ignores_unweighted_tokens():
  logits = jnp.log(jnp.asarray([[[0.5, 0.5], [0.9, 0.1]]]))
  total, count = evaluate.weighted_cross_entropy(logits, jnp.asarray([[0, 1]]), jnp.asarray([[1.0, 0.0]]))
  assert float(count) == 1.0 and float(total) == np.float32(-np.log(0.5))
