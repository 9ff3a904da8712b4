"""Fine-tuning methods: options as grid axes, layer ranges, LoRA, SVF and prompt tuning; only the
method's P trains, the base stays bit-identical, bad options fail validation."""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import extend, tiny_study
from flax import nnx

from launch import plan
from scaling import context as context_lib
from scaling import kinds, methods, train
from scaling import mesh as mesh_lib
from scaling import model as model_lib
from scaling import run as run_lib
from scaling import study as study_lib
from scaling.methods import lora, reft, svf

CFG = model_lib.ladder_config("d32l2", 64)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _prepared(method, seed=0):
  return method.prepare(model_lib.Transformer(CFG, nnx.Rngs(seed)), nnx.Rngs(seed + 1))


def _tokens():
  return jax.random.randint(jax.random.key(3), (2, 12), 0, CFG.vocab_size)


def test_options_given_as_tuples_are_grid_axes_and_labels_name_what_differs():
  specs = methods.expand({"name": "lora", "rank": (2, 4), "targets": ("wq", "wo")})
  assert [s["rank"] for s in specs] == [2, 4] and all(s["targets"] == ["wq", "wo"] for s in specs)
  assert [methods.label(s) for s in specs] == ["lora-rank2-targetswq_wo", "lora-rank4-targetswq_wo"]
  axis = methods.expand({"name": "lora", "targets": (("wq",), ("w_up", "w_down"))})
  assert [s["targets"] for s in axis] == [["wq"], ["w_up", "w_down"]]
  assert (
    methods.expand("full") == [{"name": "full", "layers": None}]
    and methods.label({"name": "full", "layers": None}) == "full"
  )
  assert [s["layers"] for s in methods.expand({"name": "full", "layers": ((0, 1), (1, 2))})] == [[0, 1], [1, 2]]
  # A learning rate of its own is a training option of every method: in the spec only when given.
  rates = methods.expand({"name": "reft", "learning_rate": (None, 0.01)})
  assert "learning_rate" not in rates[0] and rates[1]["learning_rate"] == 0.01
  assert [methods.label(s) for s in rates] == ["reft", "reft-lr0.01"]
  assert methods.training_overrides(rates[1]) == {"learning_rate": 0.01} and methods.training_overrides(rates[0]) == {}


def test_each_method_combination_is_its_own_run():
  study = study_lib.validate(tiny_study(**{"finetune.methods": ("full", {"name": "lora", "rank": (2, 4)})}), 1)
  fts = [r for r in kinds.expand(study) if r.kind == "finetune"]
  assert len(fts) == 3 * 2 and len({r.id for r in fts}) == 6  # 3 methods x 2 D_f, each its own id.
  assert {methods.label(r.config["method"]) for r in fts} == {"full", "lora-rank2", "lora-rank4"}


@pytest.mark.parametrize(
  "entry, message",
  [
    ({"name": "lora", "rank": 0}, "lora.rank=0; allowed: a positive integer"),
    ({"name": "lora", "targets": ("wq", "wz")}, "lora.targets=('wq', 'wz'); allowed: a non-empty subset of"),
    (
      {"name": "lora", "ranks": 4},
      "lora has no option 'ranks'; allowed: ['rank', 'alpha', 'targets', 'layers', 'learning_rate']",
    ),
    (
      {"name": "full", "layers": (1, 3)},
      "full.layers=(1, 3); allowed: (first, last + 1) with 0 <= first < last + 1 <= 2",
    ),
    ({"name": "lora9"}, "is not a fine-tuning method"),
    ({"name": "svf", "layers": (0, 0)}, "svf.layers=(0, 0); allowed"),
    (
      {"name": "prompt", "length": 17},
      "prompt.length=17 is longer than the fine-tuning sequence (finetune.train.seq_len=16); allowed: 1 to 16",
    ),
    ({"name": "reft", "rank": 33}, "reft.rank=33 exceeds the model width 32; allowed: 1 to 32"),
    ({"name": "reft", "positions": "last2"}, "reft.positions='last2'; allowed: 'f<n>', 'l<m>' or 'f<n>+l<m>'"),
    ({"name": "reft", "layers": (2, 3)}, "reft.layers=(2, 3); allowed"),
    (
      {"name": "lora", "learning_rate": 0},
      "lora.learning_rate=0; allowed: a positive number, or None for finetune.train.learning_rate",
    ),
  ],
)
def test_bad_method_options_fail_validation_naming_the_field(entry, message):
  with pytest.raises(study_lib.StudyError, match="finetune.methods") as e:
    study_lib.validate(tiny_study(**{"finetune.methods": ("full", entry)}), 1)
  assert message in str(e.value)


def test_lora_starts_as_its_base_and_merges_to_the_same_logits():
  base = model_lib.Transformer(CFG, nnx.Rngs(0))
  method = methods.get_method("lora", rank=4, targets=("wq", "wv", "wo", "w_down"))
  model = _prepared(method)
  np.testing.assert_array_equal(np.asarray(model(_tokens())), np.asarray(base(_tokens())))  # B = 0: exact.
  # Train-like perturbation of every adapter, then fold the adapters into plain weights.
  params = nnx.state(model, lora.LoraParam)
  nnx.update(model, jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(1), x.shape), params))
  unmerged = np.asarray(model(_tokens()))
  assert not np.allclose(unmerged, np.asarray(base(_tokens())))
  merged = lora.merge(model)
  assert not nnx.state(merged, lora.LoraParam)  # No adapters left.
  np.testing.assert_allclose(np.asarray(merged(_tokens())), unmerged, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
  "options",
  [
    {},
    {"rank": 2, "targets": ("wq", "wk", "wv", "wo", "w_up", "w_gate", "w_down")},
    {"rank": 3, "targets": ("wo",), "layers": (1, 2)},
  ],
)
def test_lora_trains_rank_times_in_plus_out_per_target(options):
  method = methods.get_method("lora", **options)
  d, n, h, f = CFG.d_model, CFG.n_heads, CFG.head_width, CFG.ff_width
  shapes = {
    "wq": (d, n * h),
    "wk": (d, n * h),
    "wv": (d, n * h),
    "wo": (n * h, d),
    "w_up": (d, f),
    "w_gate": (d, f),
    "w_down": (f, d),
  }
  layers = len(range(*(method.layers or (0, CFG.n_layers))))
  expected = layers * sum(method.rank * sum(shapes[t]) for t in method.targets)
  assert methods.trainable_count(method, _prepared(method)) == expected


def test_full_with_a_layer_range_trains_only_those_blocks():
  method = methods.get_method("full", layers=(1, 2))
  model = _prepared(method)
  block = sum(x.size for x in jax.tree.leaves(nnx.state(model.blocks[1], nnx.Param)))
  assert methods.trainable_count(method, model) == block
  assert methods.trainable_count(methods.get_method("full"), model) == model_lib.param_count(CFG)


def _flat(tree) -> dict:
  return {tuple(path): leaf for path, leaf in nnx.to_flat_state(nnx.State(tree))}


TRAINED = (
  {"name": "lora", "rank": 2},
  {"name": "full", "layers": (1, 2)},
  {"name": "svf", "targets": ("w_up", "wo")},
  {"name": "prompt", "length": 3},
  {"name": "reft", "rank": 2, "learning_rate": 0.01},
)


@pytest.fixture(scope="module")
def shared_base(tmp_path_factory):
  """A workdir with one pretrained base, and the runs of a study that tunes it by every TRAINED method."""
  workdir = tmp_path_factory.mktemp("methods")
  study = study_lib.validate(
    tiny_study(
      **{
        "finetune.methods": TRAINED,
        "finetune.d_f": (16,),
        "finetune.train.max_steps": 10,
        "finetune.train.eval_every": 0,
      }
    ),
    1,
  )
  runs = kinds.expand(study)
  plan.write_plan(study, runs, workdir)
  run_lib.execute(runs[0], workdir)
  return workdir, runs


@pytest.mark.parametrize("entry, replaced", zip(TRAINED, (0, 9, 4, 0, 0)))
def test_only_the_method_parameters_train_and_the_optimiser_holds_two_moments_of_them(shared_base, entry, replaced):
  workdir, all_runs = shared_base
  runs = [all_runs[0], next(r for r in all_runs[1:] if r.config["method"] == methods.expand(entry)[0])]
  record = run_lib.execute(runs[1], workdir)
  method = methods.from_spec(runs[1].config["method"])
  p = methods.trainable_count(method, _prepared(method))
  assert record["trainable_params"] == p and record["method"] == methods.label(runs[1].config["method"])
  assert record["train"]["learning_rate"] == entry.get("learning_rate", runs[1].config["train"]["learning_rate"])
  ctx = context_lib.context(runs[1], workdir)
  with mesh_lib.activate(ctx.mesh, ctx.rules):
    base, tuned = (context_lib.load_run_model(ctx, r.id) for r in runs)
  assert sum(x.size for x in jax.tree.leaves(tuned.params)) == p  # The kept model is P, not a base copy.
  tx = train.make_optimizer(train.TrainConfig(**runs[1].config["train"]))
  moments = [x.size for x in jax.tree.leaves(jax.eval_shape(tx.init, tuned.params)) if x.ndim > 0]
  assert sum(moments) == 2 * p  # Adam's two moments, of the trainable parameters only.
  # Every base weight outside P is bit-identical to the base's (LoRA keeps it as `<weight>/base`,
  # prompt tuning and LoReFT as `model/<weight>`).
  base_flat = _flat(base.params)
  unwrap = lambda path: path[1:] if path[0] == "model" else path[:-1] if path[-1] == "base" else path
  frozen = {unwrap(path): leaf for path, leaf in _flat(tuned.frozen).items()}
  untouched = [path for path in base_flat if path in frozen]
  assert len(untouched) == len(base_flat) - replaced  # Full: block 1's 9 weights; SVF: its 2 x 2 matrices.
  for path in untouched:
    np.testing.assert_array_equal(np.asarray(frozen[path]), np.asarray(base_flat[path]), err_msg=str(path))
  # Training moved P: from the base weights (full), from B = 0 (LoRA), from z - 1 = 0 (SVF), from
  # W - R = 0 and b = 0 (LoReFT).
  start = {
    "full": lambda path: base_flat[path],
    "lora": lambda path: 0.0 if path[-1] == "b" else None,
    "svf": lambda path: 0.0,
    "prompt": lambda path: None,
    "reft": lambda path: 0.0 if path[-1] in ("dw", "b") else None,
  }[entry["name"]]
  assert (
    any(
      start(path) is not None and not np.all(np.asarray(leaf) == start(path))
      for path, leaf in _flat(tuned.params).items()
    )
    or entry["name"] == "prompt"
  )
  # Which blocks' weights moved: none for the methods that edit inputs or hidden states.
  unchanged = {
    "full": [True, False],
    "lora": [False, False],
    "svf": [False, False],
    "prompt": [True, True],
    "reft": [True, True],
  }[entry["name"]]
  assert [c == 0.0 for c in record["layer_change"]] == unchanged, record["layer_change"]
  if entry["name"] == "prompt":  # It started as embedding rows, and training moved every vector.
    vectors, table = np.asarray(tuned.params["prompt"]), np.asarray(base_flat[("embed",)])
    assert not any((table == v).all(axis=1).any() for v in vectors)


def test_evaluation_is_as_long_as_training_was(shared_base):
  # The task's splits: the fine-tuning length; the corpus's: the base's pretraining length.
  workdir, runs = shared_base
  for run in runs[:2]:  # The base, then a fine-tune of it.
    ctx = context_lib.context(run, workdir)
    assert ctx.eval_length(ctx.sources.corpus("heldout")) == runs[0].config["train"]["seq_len"] == 48
  assert ctx.eval_length(ctx.sources.task("qa", "test")) == ctx.eval_length(ctx.sources.task("qa", "dev")) == 16


def test_svf_starts_as_its_base_and_trains_one_scale_per_singular_value():
  base = model_lib.Transformer(CFG, nnx.Rngs(0))
  method = methods.get_method("svf", targets=("wq", "wo", "w_up", "w_gate", "w_down"))
  model = _prepared(method)
  np.testing.assert_allclose(np.asarray(model(_tokens())), np.asarray(base(_tokens())), rtol=1e-5, atol=1e-5)
  d, inner, f = CFG.d_model, CFG.n_heads * CFG.head_width, CFG.ff_width
  per_layer = min(d, inner) * 2 + min(d, f) * 3
  assert methods.trainable_count(method, model) == CFG.n_layers * per_layer
  dz = nnx.state(model, svf.SvfParam)
  nnx.update(model, jax.tree.map(lambda x: x + 0.5, dz))  # Scaling every singular value scales the weight.
  np.testing.assert_allclose(
    np.asarray(model.blocks[0].mlp.w_up[...]), 1.5 * np.asarray(base.blocks[0].mlp.w_up[...]), rtol=1e-4, atol=1e-5
  )


def _decayed_logits(name: str) -> tuple[np.ndarray, np.ndarray]:
  """A prepared model's logits, and its logits after ten optimiser steps of weight decay alone (zero gradients)."""
  method = methods.get_method(name)
  model = _prepared(method)
  tokens, prompt_len = _reft_inputs()
  graphdef, params, frozen = nnx.split(model, method.trainable, ...)
  tx = train.make_optimizer(train.TrainConfig(warmup_steps=0, learning_rate=0.01, weight_decay=0.1))
  opt, zeros = tx.init(params), jax.tree.map(jnp.zeros_like, params)
  for _ in range(10):
    updates, opt = tx.update(zeros, opt, params)
    params = optax.apply_updates(params, updates)
  return np.asarray(model(tokens, prompt_len)), np.asarray(nnx.merge(graphdef, params, frozen)(tokens, prompt_len))


@pytest.mark.parametrize("name, moves", [("lora", False), ("svf", False), ("reft", False), ("full", True)])
def test_weight_decay_pulls_a_method_toward_its_start_not_toward_zero(name, moves):
  # LoRA, SVF and LoReFT train changes from their start (B; z - 1; W - R and b), so decay alone
  # leaves the model its base; full tuning's weights decay toward 0, which moves the model.
  start, decayed = _decayed_logits(name)
  if moves:
    assert not np.allclose(decayed, start, rtol=1e-3, atol=1e-3)
  else:  # LoReFT's R is taken again from its decayed basis: the same up to rounding.
    np.testing.assert_allclose(decayed, start, rtol=0, atol=1e-6)


def test_prompt_tuning_scores_only_the_input_and_decodes_with_the_cache():
  method = methods.get_method("prompt", length=5)
  model = _prepared(method)
  tokens = _tokens()
  logits = model(tokens)
  assert logits.shape == (2, 12, CFG.vocab_size)  # The input's own positions only.
  assert methods.trainable_count(method, model) == 5 * CFG.d_model
  table = np.asarray(model.model.embed[...])
  assert all((table == v).all(axis=1).any() for v in np.asarray(model.prompt[...]))  # Vocabulary embeddings.
  base = model_lib.Transformer(CFG, nnx.Rngs(0))
  assert not np.allclose(np.asarray(logits), np.asarray(base(tokens)))  # The prompt changes what follows.
  cache = model.init_cache(2, 12)
  positions = jnp.broadcast_to(jnp.arange(12), (2, 12))
  first, cache = extend(model, tokens[:, :8], positions[:, :8], cache)
  rest, _ = extend(model, tokens[:, 8:], positions[:, 8:], cache)
  np.testing.assert_allclose(np.concatenate([first, rest], axis=1), np.asarray(logits), rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="prompt.length=0; allowed: a positive integer"):
    methods.get_method("prompt", length=0)


def test_prompt_tuning_starts_from_the_tokenizers_tokens_not_the_vocabularys_padding():
  # CFG's 64 rows as a tokenizer of 40 tokens padded to 64: 64 draws over all rows would take a
  # padding row with probability 1 - (40/64)^64, so nearly surely.
  model = methods.get_method("prompt", length=64).prepare(
    model_lib.Transformer(CFG, nnx.Rngs(0)), nnx.Rngs(1), tokenizer_size=40
  )
  table = np.asarray(model.model.embed[...])
  assert all((table[:40] == v).all(axis=1).any() for v in np.asarray(model.prompt[...]))
  with pytest.raises(
    ValueError, match="a tokenizer of 65 tokens for prompt tuning; allowed: 1 to the model's vocabulary, 64"
  ):
    methods.get_method("prompt").prepare(model_lib.Transformer(CFG, nnx.Rngs(0)), nnx.Rngs(1), tokenizer_size=65)


def test_a_run_prepares_prompt_tuning_with_its_tokenizers_size(tmp_path):
  run = kinds.expand(study_lib.validate(tiny_study(), 1))[0]
  ctx = context_lib.context(run, tmp_path)
  assert ctx.tok.size < ctx.model_cfg.vocab_size  # The world's tokens, padded to a multiple of 64.
  with mesh_lib.activate(ctx.mesh, ctx.rules):
    model = context_lib.build_model(ctx, run.config["size"], methods.get_method("prompt", length=256), 0)
  # 256 draws over every row would take one of the padding rows nearly surely.
  table = np.asarray(model.frozen["model"]["embed"])
  assert all((table[: ctx.tok.size] == v).all(axis=1).any() for v in np.asarray(model.params["prompt"]))


def _reft_inputs():
  tokens = _tokens()
  return tokens, jnp.asarray([5, 9], jnp.int32)  # Each row's prompt length.


@pytest.mark.parametrize("options", [{}, {"rank": 3, "layers": (1, 2), "positions": "f1+l1"}])
def test_reft_starts_as_its_base_and_trains_two_rank_by_width_matrices_and_a_bias_per_layer(options):
  method = methods.get_method("reft", **options)
  model, base = _prepared(method), model_lib.Transformer(CFG, nnx.Rngs(0))
  tokens, prompt_len = _reft_inputs()
  np.testing.assert_array_equal(np.asarray(model(tokens, prompt_len)), np.asarray(base(tokens)))  # W = R, b = 0: exact.
  layers = len(range(*(method.layers or (0, CFG.n_layers))))
  assert methods.trainable_count(method, model) == layers * (2 * method.rank * CFG.d_model + method.rank)
  with pytest.raises(ValueError, match="needs each row's prompt_len"):
    model(tokens)


def test_reft_edits_only_the_chosen_prompt_positions_and_decodes_with_the_cache():
  model = _prepared(methods.get_method("reft", positions="f1+l2"))
  params = nnx.state(model, reft.ReftParam)
  nnx.update(model, jax.tree.map(lambda x: x + 0.3 * jax.random.normal(jax.random.key(2), x.shape), params))
  tokens, prompt_len = _reft_inputs()
  logits, base = np.asarray(model(tokens, prompt_len)), np.asarray(model.model(tokens))
  # Row 0's prompt is positions 0-4, and 0, 3 and 4 are edited: through attention, the edit of
  # position 0 reaches every later position.
  changed = ~np.isclose(logits, base, rtol=1e-6, atol=1e-6).all(axis=-1)
  assert changed[:, 0].all() and changed.all()
  # With only the last position edited, every position before it is the base's, exactly.
  last = _prepared(methods.get_method("reft", positions="l1"))
  nnx.update(
    last,
    jax.tree.map(lambda x: x + 0.3 * jax.random.normal(jax.random.key(2), x.shape), nnx.state(last, reft.ReftParam)),
  )
  edited = np.asarray(last(tokens, prompt_len))
  for row, end in enumerate([5, 9]):
    np.testing.assert_array_equal(edited[row, : end - 1], base[row, : end - 1])
    assert not np.allclose(edited[row, end - 1 :], base[row, end - 1 :])
  # Decoding: a prefill then one token at a time gives the teacher-forced logits.
  cache, positions = model.init_cache(2, 12), jnp.broadcast_to(jnp.arange(12), (2, 12))
  first, cache = extend(model, tokens[:, :7], positions[:, :7], cache, prompt_len)
  steps = []
  for t in range(7, 12):
    step, cache = extend(model, tokens[:, t : t + 1], positions[:, t : t + 1], cache, prompt_len)
    steps.append(step)
  np.testing.assert_allclose(np.concatenate([first, *steps], axis=1), logits, rtol=1e-5, atol=1e-5)


def test_reft_rotation_stays_orthonormal_while_training():
  method = methods.get_method("reft", rank=4)
  model = _prepared(method)
  tokens, prompt_len = _reft_inputs()
  graphdef, params, frozen = nnx.split(model, reft.ReftParam, ...)
  tx = train.make_optimizer(train.TrainConfig(batch_size=2, seq_len=12, warmup_steps=0, learning_rate=0.05))
  state = {"step": jnp.int32(0), "params": params, "opt": tx.init(params), "tokens": jnp.float32(0)}
  batch = {
    "inputs": tokens,
    "targets": jnp.roll(tokens, -1, axis=1),
    "weights": jnp.ones(tokens.shape),
    "prompt_len": prompt_len,
  }
  step = jax.jit(lambda s: train.train_step(graphdef, tx, s, frozen, batch))
  losses = []
  for _ in range(10):
    state, metrics = step(state)
    losses.append(float(metrics["loss"]))
  assert losses[-1] < losses[0]
  trained = nnx.merge(graphdef, state["params"], frozen)
  for intervention in trained.interventions:
    r = np.asarray(intervention.rotation())
    np.testing.assert_allclose(r @ r.T, np.eye(4), atol=1e-5)
  assert not np.allclose(np.asarray(trained.interventions[0].basis[...]), np.asarray(model.interventions[0].basis[...]))


@pytest.mark.parametrize("name", sorted(methods.METHODS))
def test_every_method_trains_the_same_with_its_loss_in_chunks(name):
  method = methods.get_method(name)
  graphdef, params, frozen = nnx.split(_prepared(method), method.trainable, ...)
  tokens, prompt_len = _reft_inputs()
  tx = train.make_optimizer(train.TrainConfig(warmup_steps=0))
  batch = {
    "inputs": tokens,
    "targets": jnp.roll(tokens, -1, axis=1),
    "weights": jnp.ones(tokens.shape),
    "prompt_len": prompt_len,
  }
  state = {"step": jnp.int32(0), "params": params, "opt": tx.init(params), "tokens": jnp.float32(0)}
  (whole, whole_m), (chunked, chunked_m) = (
    jax.jit(lambda s, c=chunk: train.train_step(graphdef, tx, s, frozen, batch, c))(state) for chunk in (0, 5)
  )
  np.testing.assert_allclose(chunked_m["loss"], whole_m["loss"], rtol=1e-6)
  np.testing.assert_allclose(chunked_m["grad_norm"], whole_m["grad_norm"], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), chunked["params"], whole["params"])


def test_the_methods_study_config_is_valid_and_covers_every_method():
  sys.path.insert(0, ROOT)
  from configs import methods as methods_config

  runs = kinds.expand(study_lib.validate(methods_config.get_config(), 1))
  labels = {methods.label(r.config["method"]) for r in runs if r.kind == "finetune"}
  assert {r.config["method"]["name"] for r in runs if r.kind == "finetune"} == set(methods.METHODS)
  assert {
    "full",
    "full-layers0_1",
    "lora-rank2",
    "lora",
    "lora-rank32",
    "prompt-length4-lr0.01",
    "prompt-length16-lr0.01",
    "reft-rank1-lr0.01",
    "reft-lr0.01",
  } <= labels
  assert any(r.kind == "transplant" for r in runs)
  assert not any(r.kind == "eft" for r in runs)
