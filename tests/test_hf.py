"""Hugging Face import and export against `transformers` itself (PyTorch on the CPU, test-only)."""

import hashlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import needs_transformers
from flax import nnx

from scaling import hf, methods
from scaling import mesh as mesh_lib
from scaling import model as model_lib

pytestmark = needs_transformers
VOCAB = 96
FAMILIES = {
  "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM"),
  "llama": ("LlamaConfig", "LlamaForCausalLM"),
  "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
}  # transformers' config and model classes.
# Each family and the variants that exercise a different path of the converter.
CASES = {
  "neox_parallel": ("gpt_neox", dict(rotary_pct=0.5, use_parallel_residual=True)),
  "neox_sequential": (
    "gpt_neox",
    dict(rotary_pct=0.25, use_parallel_residual=False, attention_bias=False, num_attention_heads=2),
  ),
  "llama_gqa_untied": ("llama", dict(num_key_value_heads=2, head_dim=16, tie_word_embeddings=False)),
  "llama_biases": ("llama", dict(attention_bias=True, mlp_bias=True, tie_word_embeddings=True)),
  "qwen2_tied": ("qwen2", dict(num_key_value_heads=2, tie_word_embeddings=True)),
}
TOKENS = np.random.default_rng(0).integers(0, VOCAB, (2, 12))


def build_reference(kind: str, seed: int = 0, **options):
  """A tiny random model that transformers builds, every parameter re-randomised (its init sets
  biases to 0 and norm weights to 1, which would hide bugs)."""
  import torch
  import transformers

  config_cls, model_cls = (getattr(transformers, name) for name in FAMILIES[kind])
  config = config_cls(
    **{
      "vocab_size": VOCAB,
      "hidden_size": 32,
      "num_hidden_layers": 2,
      "num_attention_heads": 4,
      "intermediate_size": 64,
      **options,
    }
  )
  torch.manual_seed(seed)
  model = model_cls(config).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      p.copy_(torch.randn_like(p) * 0.2 + (1.0 if "norm" in name and name.endswith("weight") else 0.0))
  return model


def reference_outputs(folder):
  """transformers' float32 eager logits and per-layer hidden states of a saved folder."""
  import torch
  import transformers

  model = transformers.AutoModelForCausalLM.from_pretrained(
    str(folder), dtype=torch.float32, attn_implementation="eager"
  ).eval()
  with torch.no_grad():
    out = model(torch.tensor(TOKENS), output_hidden_states=True)
  return out.logits.numpy(), [h.numpy() for h in out.hidden_states[1:]]


def our_outputs(model):
  """Our logits and each block's output (the last one through the final norm, as transformers gives it)."""
  hidden = []
  logits, _ = model.forward_embeddings(
    model.embed_tokens(jnp.asarray(TOKENS)), after_block=lambda i, x: hidden.append(x) or x
  )
  hidden[-1] = model.norm_out(hidden[-1])
  return np.asarray(logits), [np.asarray(h) for h in hidden]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
  """Each case saved by transformers (`save_pretrained`), by case name."""
  root = tmp_path_factory.mktemp("hf")
  out = {}
  for name, (kind, options) in CASES.items():
    build_reference(kind, **options).save_pretrained(root / name)
    out[name] = root / name
  return out


@pytest.mark.parametrize("case", CASES)
def test_logits_and_every_layer_match_transformers(folders, case):
  ref_logits, ref_hidden = reference_outputs(folders[case])
  logits, hidden = our_outputs(hf.load(folders[case]))
  for i, (ours, theirs) in enumerate(zip(hidden, ref_hidden, strict=True)):
    assert np.abs(ours - theirs).max() < 1e-4, f"{case}: layer {i} differs by {np.abs(ours - theirs).max()}"
  assert np.abs(logits - ref_logits).max() < 1e-4


def test_imported_config_keeps_the_families_options(folders):
  neox = hf.load(folders["neox_parallel"]).cfg
  assert (neox.norm, neox.mlp, neox.rotary_dims, neox.parallel_residual, neox.tie_embeddings) == (
    "layer",
    "gelu_exact",
    4,
    True,
    False,
  )
  assert hf.load(folders["neox_sequential"]).cfg.use_bias == ("mlp",)
  qwen = hf.load(folders["qwen2_tied"]).cfg
  assert (qwen.use_bias, qwen.kv_heads, qwen.tie_embeddings) == (("qkv",), 2, True)
  assert model_lib.param_count(qwen) == sum(
    p.numel() for p in build_reference("qwen2", **CASES["qwen2_tied"][1]).parameters()
  )


def test_old_pythia_config_and_half_precision_shards_load(folders, tmp_path):
  """A config.json as older transformers wrote Pythia's, bfloat16 weights in several shards."""
  import torch

  reference = build_reference("gpt_neox", seed=1, rotary_pct=0.5, use_parallel_residual=True).to(torch.bfloat16)
  reference.save_pretrained(tmp_path, max_shard_size="20KB")
  assert (tmp_path / hf.INDEX).exists()
  config = json.loads((tmp_path / "config.json").read_text())
  for key in ("rope_parameters", "dtype", "partial_rotary_factor"):
    config.pop(key, None)
  config.update(rotary_pct=0.5, rotary_emb_base=10000, torch_dtype="bfloat16", transformers_version="4.24.0")
  (tmp_path / "config.json").write_text(json.dumps(config))
  ours = hf.load(tmp_path)
  assert ours.cfg.rotary_dims == 4
  stored = {name: p.detach().float().numpy() for name, p in reference.named_parameters()}
  assert np.array_equal(np.asarray(ours.embed[...]), stored["gpt_neox.embed_in.weight"])
  assert np.array_equal(
    np.asarray(ours.blocks[1].mlp.w_down[...]), stored["gpt_neox.layers.1.mlp.dense_4h_to_h.weight"].T
  )


def test_sharded_load_equals_unsharded(folders):
  mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  sharded = hf.load(folders["llama_gqa_untied"], mesh=mesh)
  wq = sharded.blocks[0].attn.wq[...]
  assert wq.sharding.spec == mesh_lib.spec(("embed", "heads", "head_dim"))
  assert {s.data.shape for s in wq.addressable_shards} == {(16, 2, 16)}  # Each device holds its slice only.
  with mesh_lib.activate(mesh):
    logits = np.asarray(jax.jit(lambda m, t: m(t))(sharded, jnp.asarray(TOKENS)))
  np.testing.assert_allclose(logits, our_outputs(hf.load(folders["llama_gqa_untied"]))[0], atol=1e-5)


@pytest.mark.parametrize("case", ["neox_parallel", "llama_gqa_untied", "qwen2_tied"])
def test_hf_to_ours_to_hf_gives_identical_tensors(folders, case, tmp_path):
  hf.save(hf.load(folders[case]), tmp_path / "out", like=folders[case])
  before, after = hf.Tensors(folders[case]), hf.Tensors(tmp_path / "out")
  assert set(before.entries) == set(after.entries)
  for name in before.entries:
    assert np.array_equal(np.asarray(before[name]), np.asarray(after[name])), name


def _randomised(cfg: model_lib.ModelConfig, seed: int = 0) -> model_lib.Transformer:
  """Our model with every parameter random (norm scales near 1, biases nonzero)."""
  model = model_lib.Transformer(cfg, nnx.Rngs(seed))
  graphdef, state = nnx.split(model)
  leaves, tree = jax.tree.flatten(state)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  leaves = [x + 0.2 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
  return nnx.merge(graphdef, jax.tree.unflatten(tree, leaves))


@pytest.mark.parametrize(
  "block",
  [
    dict(n_kv_heads=2, tie_embeddings=False),  # Llama.
    dict(use_bias=("qkv",), head_dim=16),  # Qwen2.
    dict(norm="layer", mlp="gelu_exact", use_bias=True, parallel_residual=True, rotary_fraction=0.5),  # GPT-NeoX.
  ],
)
def test_our_model_exported_loads_in_transformers_with_equal_logits(block, tmp_path):
  cfg = model_lib.ModelConfig(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, **block)
  model = _randomised(cfg)
  hf.save(model, tmp_path)
  np.testing.assert_allclose(reference_outputs(tmp_path)[0], np.asarray(model(jnp.asarray(TOKENS))), atol=1e-4)


def test_lora_is_merged_on_export_and_activation_methods_refuse(tmp_path):
  cfg = model_lib.ModelConfig(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4)
  tuned = methods.get_method("lora", rank=2).prepare(_randomised(cfg), nnx.Rngs(1))
  graphdef, state = nnx.split(tuned)
  state = jax.tree.map(lambda x: x + 0.1, state)  # B = 0 at the start: move it so the adapters matter.
  tuned = nnx.merge(graphdef, state)
  hf.save(tuned, tmp_path / "lora")
  np.testing.assert_allclose(reference_outputs(tmp_path / "lora")[0], np.asarray(tuned(jnp.asarray(TOKENS))), atol=1e-4)
  reft = methods.get_method("reft").prepare(_randomised(cfg), nnx.Rngs(1))
  with pytest.raises(ValueError, match="cannot be saved"):
    hf.save(reft, tmp_path / "reft")
  assert not (tmp_path / "reft").exists()


def _edit_config(folder, tmp_path, **changes):
  import shutil

  shutil.copytree(folder, tmp_path, dirs_exist_ok=True)
  config = json.loads((tmp_path / "config.json").read_text())
  config.update(changes)
  (tmp_path / "config.json").write_text(json.dumps(config))
  return tmp_path


def test_bad_folders_fail_naming_what_is_wrong(folders, tmp_path):
  llama = folders["llama_gqa_untied"]
  with pytest.raises(ValueError, match="no config.json"):
    hf.load(tmp_path)
  (tmp_path / "w").mkdir()
  (tmp_path / "w" / "config.json").write_text((llama / "config.json").read_text())
  with pytest.raises(ValueError, match="no weights; expected model.safetensors"):
    hf.load(tmp_path / "w")
  with pytest.raises(ValueError, match="model_type='gpt2'.*allowed: \\['gpt_neox', 'llama', 'qwen2'\\]"):
    hf.load(_edit_config(llama, tmp_path / "gpt2", model_type="gpt2"))
  with pytest.raises(ValueError, match="rope type 'linear'"):
    hf.load(
      _edit_config(llama, tmp_path / "rope", rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4})
    )
  with pytest.raises(ValueError, match="sliding-window"):
    hf.load(_edit_config(folders["qwen2_tied"], tmp_path / "swa", use_sliding_window=True))
  with pytest.raises(
    ValueError,
    match=r"tensor model.layers.0.mlp.down_proj.weight has shape \[32, 64\]; "
    r"this config.json needs \[32, 80\]",
  ):
    hf.load(_edit_config(llama, tmp_path / "shape", intermediate_size=80))
  missing = _edit_config(llama, tmp_path / "missing")
  tensors = hf.Tensors(missing)
  kept = {n: np.array(tensors[n]) for n in tensors.entries if n != "model.layers.1.self_attn.k_proj.weight"}
  hf.write_safetensors(kept, missing / hf.SINGLE)
  with pytest.raises(ValueError, match="tensor model.layers.1.self_attn.k_proj.weight is missing"):
    hf.load(missing)


def test_export_refuses_what_the_family_cannot_hold(tmp_path):
  cfg = model_lib.ModelConfig(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, mlp="gelu", norm="layer")
  with pytest.raises(ValueError, match="a llama checkpoint cannot hold model.norm='layer'"):
    hf.save(model_lib.Transformer(cfg, nnx.Rngs(0)), tmp_path / "x", like="llama")
  assert not (tmp_path / "x").exists()


def test_a_local_files_hash_is_kept_on_disk_until_the_file_changes(tmp_path, monkeypatch):
  """A later process reads a weights file's SHA-256 from the cache; a rewritten file is hashed anew."""
  monkeypatch.setenv("SCALING_HASH_CACHE", str(tmp_path / "cache"))
  folder = tmp_path / "llama"
  hf.save(_randomised(model_lib.ModelConfig(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4)), folder)
  (weights,) = hf.Tensors(folder).files
  stat = os.stat(weights)
  first = hf.content_id(folder)
  assert hf._sha256(str(weights), stat.st_size, stat.st_mtime_ns) == hashlib.sha256(weights.read_bytes()).hexdigest()
  (entry,) = [
    e for e in (tmp_path / "cache").iterdir() if e.read_text() == hashlib.sha256(weights.read_bytes()).hexdigest()
  ]
  entry.write_text("0" * 64)  # What a later process would read, were it this.
  hf._sha256.cache_clear()
  assert hf._sha256(str(weights), stat.st_size, stat.st_mtime_ns) == "0" * 64
  assert hf.content_id(folder) != first
  entry.write_text("not a digest")  # A damaged entry is hashed again and rewritten.
  hf._sha256.cache_clear()
  assert hf.content_id(folder) == first and entry.read_text() != "not a digest"
  os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))  # A touched file is hashed anew.
  hf._sha256.cache_clear()
  entries = len(list((tmp_path / "cache").iterdir()))
  assert hf.content_id(folder) == first and len(list((tmp_path / "cache").iterdir())) == entries + 1


def test_a_folder_on_gs_saves_loads_and_has_a_content_id(storage, tmp_path):
  cfg = model_lib.ModelConfig(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2)
  model = _randomised(cfg)
  folder = f"{storage.workdir()}/llama"
  hf.save(model, folder, dtype="bfloat16")
  hf.save(model, tmp_path / "llama", dtype="bfloat16")
  loaded = hf.load(folder)
  np.testing.assert_array_equal(
    np.asarray(loaded(jnp.asarray(TOKENS))), np.asarray(hf.load(tmp_path / "llama")(jnp.asarray(TOKENS)))
  )
  first = hf.content_id(folder)  # From the store's checksums: nothing is downloaded.
  assert hf.content_id(folder) == first
  hf.save(_randomised(cfg, seed=1), folder)
  assert hf.content_id(folder) != first
