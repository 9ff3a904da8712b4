"""Hugging Face model folders in and out: GPT-NeoX (Pythia), Llama and Qwen2 checkpoints as our
Transformer, and our models (methods merged) back as folders that `transformers` loads.

A folder holds config.json and safetensors weights (one file, or shards listed in
model.safetensors.index.json), locally or on gs://. Each of our parameters is read as a view of its
stored tensor (reshaped and transposed without reading), and every device reads only its slice of
that view: local files are memory-mapped, so a host reads only what its devices hold; remote files
are read one tensor at a time.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import pathlib
import re
from collections.abc import Callable

import jax
import ml_dtypes
import numpy as np
from etils import epath
from flax import nnx, traverse_util

from scaling import mesh as mesh_lib
from scaling import model as model_lib

# safetensors dtype names; numpy has no bfloat16, ml_dtypes does.
DTYPES = {
  "F32": np.dtype(np.float32),
  "F16": np.dtype(np.float16),
  "BF16": np.dtype(ml_dtypes.bfloat16),
  "F64": np.dtype(np.float64),
}
SINGLE, INDEX = "model.safetensors", "model.safetensors.index.json"
# Files that travel with an exported model when `like` is a folder: its tokenizer.
TOKENIZER_FILES = (
  "tokenizer.json",
  "tokenizer_config.json",
  "special_tokens_map.json",
  "vocab.json",
  "merges.txt",
  "tokenizer.model",
  "generation_config.json",
)
# Buffers that older transformers versions saved beside the weights; they are recomputed, not read.
_BUFFERS = (".attention.bias", ".attention.masked_bias", ".rotary_emb.inv_freq")


# --- Configs ---------------------------------------------------------------------------------------


def _rope(hf: dict) -> tuple[float, dict]:
  """(rope theta, the rest of the rope parameters), from new (`rope_parameters`) or old keys."""
  params = dict(hf.get("rope_parameters") or {})
  scaling = hf.get("rope_scaling") or {}  # Old configs: None, or a dict naming a scaling type.
  kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
  if kind != "default":
    raise ValueError(f"config.json: rope type {kind!r} (rope scaling) is not implemented; allowed: 'default'")
  theta = params.get("rope_theta", hf.get("rope_theta", hf.get("rotary_emb_base", 10_000.0)))
  return float(theta), params


def _gpt_neox(hf: dict) -> dict:
  theta, rope = _rope(hf)
  act = hf.get("hidden_act", "gelu")
  acts = {"gelu": "gelu_exact", "gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "gelu_fast": "gelu"}
  if act not in acts:
    raise ValueError(f"config.json: hidden_act={act!r} is not implemented for gpt_neox; allowed: {sorted(acts)}")
  fraction = rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", hf.get("rotary_pct", 0.25)))
  head = hf["hidden_size"] // hf["num_attention_heads"]
  if int(head * fraction) % 2:
    raise ValueError(
      f"config.json: partial_rotary_factor={fraction} rotates {int(head * fraction)} of {head} "
      "dims per head; allowed: an even number"
    )
  attn_bias = hf.get("attention_bias", True)
  return dict(
    n_kv_heads=None,
    head_dim=None,
    norm="layer",
    norm_eps=hf.get("layer_norm_eps", 1e-5),
    mlp=acts[act],
    rotary_fraction=float(fraction),
    rope_theta=theta,
    use_bias=True if attn_bias else ("mlp",),
    parallel_residual=hf.get("use_parallel_residual", True),
    tie_embeddings=hf.get("tie_word_embeddings", False),
  )


def _llama_like(hf: dict, bias) -> dict:
  theta, _ = _rope(hf)
  if hf.get("hidden_act", "silu") != "silu":
    raise ValueError(f"config.json: hidden_act={hf['hidden_act']!r} is not implemented; allowed: 'silu'")
  return dict(
    n_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
    head_dim=hf.get("head_dim"),
    norm="rms",
    norm_eps=hf.get("rms_norm_eps", 1e-6),
    mlp="swiglu",
    rotary_fraction=1.0,
    rope_theta=theta,
    use_bias=bias,
    parallel_residual=False,
    tie_embeddings=hf.get("tie_word_embeddings", False),
  )


def _llama(hf: dict) -> dict:
  bias = tuple(
    p
    for p, on in (("qkv", hf.get("attention_bias")), ("out", hf.get("attention_bias")), ("mlp", hf.get("mlp_bias")))
    if on
  )
  return _llama_like(hf, bias)


def _qwen2(hf: dict) -> dict:
  sliding = [i for i, t in enumerate(hf.get("layer_types") or []) if t != "full_attention"]
  if hf.get("use_sliding_window") or sliding:
    raise ValueError(
      f"config.json: sliding-window attention (use_sliding_window, layer_types at {sliding}) "
      "is not implemented; allowed: use_sliding_window=false"
    )
  return _llama_like(hf, ("qkv",))  # Qwen2: q, k and v have biases, the rest not.


# model_type -> what its config means for our ModelConfig (beyond the sizes).
FAMILIES: dict[str, Callable[[dict], dict]] = {"gpt_neox": _gpt_neox, "llama": _llama, "qwen2": _qwen2}


def read_config(path: str | epath.Path) -> dict:
  """A folder's config.json; an error names the folder if it has none."""
  file = epath.Path(path) / "config.json"
  if not file.exists():
    raise ValueError(
      f"{path}: no config.json; a Hugging Face model folder needs config.json and safetensors "
      "weights (save_pretrained writes both)"
    )
  return json.loads(file.read_text())


def model_config(hf: dict, **overrides) -> model_lib.ModelConfig:
  """Our ModelConfig of a Hugging Face config; unsupported architectures and options are errors."""
  kind = hf.get("model_type")
  if kind not in FAMILIES:
    raise ValueError(
      f"config.json: model_type={kind!r} (architectures {hf.get('architectures')}) is not supported; "
      f"allowed: {sorted(FAMILIES)}"
    )
  cfg = model_lib.ModelConfig(
    vocab_size=hf["vocab_size"],
    d_model=hf["hidden_size"],
    n_layers=hf["num_hidden_layers"],
    n_heads=hf["num_attention_heads"],
    d_ff=hf["intermediate_size"],
    **{**FAMILIES[kind](hf), **overrides},
  )
  cfg.validate()
  return cfg


# --- Tensor layouts --------------------------------------------------------------------------------
# Each of our parameters is a view of a stored tensor: numpy reshapes, transposes and slices, so
# that no data is read until a device's slice is taken, and an export writes through the same view.

Path = tuple


@dataclasses.dataclass(frozen=True)
class Slot:
  """Where one of our parameters is stored: the tensor's name and shape, and our view of it."""

  name: str
  shape: tuple[int, ...]
  view: Callable[[np.ndarray], np.ndarray]


def _same(w):
  return w


def _in_out(w):  # Stored [out, in] -> ours [in, out].
  return w.T


def _heads_in(n: int, h: int):  # Stored [n*h, d] -> ours (d, n, h).
  return lambda w: w.reshape(n, h, -1).transpose(2, 0, 1)


def _heads_out(n: int, h: int):  # Stored [d, n*h] -> ours (n, h, d).
  return lambda w: w.reshape(-1, n, h).transpose(1, 2, 0)


def _heads_bias(n: int, h: int):  # Stored [n*h] -> ours (n, h).
  return lambda b: b.reshape(n, h)


def _fused_qkv(n: int, h: int, j: int):  # GPT-NeoX: stored rows are head-major, (n, 3, h).
  return lambda w: w.reshape(n, 3, h, -1)[:, j].transpose(2, 0, 1)


def _fused_qkv_bias(n: int, h: int, j: int):
  return lambda b: b.reshape(n, 3, h)[:, j]


def layout(kind: str, cfg: model_lib.ModelConfig) -> dict[Path, Slot]:
  """Where each of our parameters lives in a `kind` checkpoint, and how to view it in our layout."""
  n, k, h, d, f, v = cfg.n_heads, cfg.kv_heads, cfg.head_width, cfg.d_model, cfg.ff_width, cfg.vocab_size
  neox = kind == "gpt_neox"
  top, layer = ("gpt_neox.", "gpt_neox.layers.{}.") if neox else ("model.", "model.layers.{}.")
  out = {("embed",): Slot(top + ("embed_in.weight" if neox else "embed_tokens.weight"), (v, d), _same)}
  if not cfg.tie_embeddings:
    out[("unembed",)] = Slot("embed_out.weight" if neox else "lm_head.weight", (v, d), _in_out)

  def norm(ours: Path, theirs: str) -> None:
    out[ours + ("scale",)] = Slot(theirs + ".weight", (d,), _same)
    if cfg.norm == "layer":
      out[ours + ("bias",)] = Slot(theirs + ".bias", (d,), _same)

  def linear(ours: Path, theirs: str, shape: tuple[int, int], view, bias: str | None, bias_view=_same) -> None:
    out[ours] = Slot(theirs + ".weight", shape, view)
    if bias:
      out[ours[:-1] + (bias,)] = Slot(theirs + ".bias", shape[:1], bias_view)

  norm(("norm_out",), top + ("final_layer_norm" if neox else "norm"))
  for i in range(cfg.n_layers):
    pre, blk = layer.format(i), ("blocks", i)
    norm(blk + ("norm_attn",), pre + "input_layernorm")
    norm(blk + ("norm_mlp",), pre + "post_attention_layernorm")
    qkv_bias, mlp_bias = cfg.has_bias("qkv"), cfg.has_bias("mlp")
    if neox:
      for j, name in enumerate("qkv"):
        linear(
          blk + ("attn", f"w{name}"),
          pre + "attention.query_key_value",
          (3 * n * h, d),
          _fused_qkv(n, h, j),
          qkv_bias and f"b{name}",
          _fused_qkv_bias(n, h, j),
        )
      attn_out, up, down = pre + "attention.dense", pre + "mlp.dense_h_to_4h", pre + "mlp.dense_4h_to_h"
    else:
      for name, heads in (("q", n), ("k", k), ("v", k)):
        linear(
          blk + ("attn", f"w{name}"),
          pre + f"self_attn.{name}_proj",
          (heads * h, d),
          _heads_in(heads, h),
          qkv_bias and f"b{name}",
          _heads_bias(heads, h),
        )
      attn_out, up, down = pre + "self_attn.o_proj", pre + "mlp.up_proj", pre + "mlp.down_proj"
      linear(blk + ("mlp", "w_gate"), pre + "mlp.gate_proj", (f, d), _in_out, mlp_bias and "b_gate")
    linear(blk + ("attn", "wo"), attn_out, (d, n * h), _heads_out(n, h), cfg.has_bias("out") and "bo")
    linear(blk + ("mlp", "w_up"), up, (f, d), _in_out, mlp_bias and "b_up")
    linear(blk + ("mlp", "w_down"), down, (d, f), _in_out, mlp_bias and "b_down")
  return out


# --- safetensors -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Entry:
  file: epath.Path
  dtype: np.dtype
  shape: tuple[int, ...]
  start: int  # Absolute byte offset in the file.
  stop: int


def _header(file: epath.Path) -> tuple[dict, int]:
  """A safetensors file's header and the offset where its data begins."""
  with file.open("rb") as f:
    size = int.from_bytes(f.read(8), "little")
    return json.loads(f.read(size)), 8 + size


class Tensors:
  """The tensors of a folder's safetensors files, by name; each read as a (lazy) numpy array."""

  def __init__(self, path: str | epath.Path):
    path = epath.Path(path)
    if (path / INDEX).exists():
      files = sorted(set(json.loads((path / INDEX).read_text())["weight_map"].values()))
    elif (path / SINGLE).exists():
      files = [SINGLE]
    else:
      raise ValueError(
        f"{path}: no weights; expected {SINGLE} or {INDEX} (save_pretrained with safe_serialization writes them)"
      )
    self.files = [path / name for name in files]
    self.entries: dict[str, _Entry] = {}
    for file in self.files:
      header, base = _header(file)
      for name, e in header.items():
        if name == "__metadata__":
          continue
        if e["dtype"] not in DTYPES:
          raise ValueError(f"{file}: tensor {name} has dtype {e['dtype']}; allowed: {sorted(DTYPES)}")
        self.entries[name] = _Entry(
          file, DTYPES[e["dtype"]], tuple(e["shape"]), base + e["data_offsets"][0], base + e["data_offsets"][1]
        )

  def __contains__(self, name: str) -> bool:
    return name in self.entries

  def __getitem__(self, name: str) -> np.ndarray:
    e = self.entries[name]
    if e.file.as_uri().startswith("file://"):  # Memory-mapped: slices are read on demand.
      return np.memmap(str(e.file), e.dtype, "r", e.start, e.shape)
    with e.file.open("rb") as f:
      f.seek(e.start)
      return np.frombuffer(f.read(e.stop - e.start), e.dtype).reshape(e.shape)


def write_safetensors(tensors: dict[str, np.ndarray], file: epath.Path) -> None:
  """Writes named arrays (float32, float16 or bfloat16) as one safetensors file."""
  names = {v: k for k, v in DTYPES.items()}
  header, offset = {"__metadata__": {"format": "pt"}}, 0
  for name, x in tensors.items():
    header[name] = {"dtype": names[x.dtype], "shape": list(x.shape), "data_offsets": [offset, offset + x.nbytes]}
    offset += x.nbytes
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-len(blob) % 8)  # The data starts 8-byte aligned.
  with file.open("wb") as f:
    f.write(len(blob).to_bytes(8, "little") + blob)
    for x in tensors.values():
      f.write(np.ascontiguousarray(x).tobytes())


@functools.lru_cache(maxsize=256)
def _sha256(file: str, size: int, mtime_ns: int) -> str:
  """A local file's SHA-256, cached in this process and on disk ($SCALING_HASH_CACHE, default
  ~/.cache/scaling/sha256) while its path, size and time stamp stay the same."""
  # A 7B checkpoint is 14 GB to read, and every command that expands a study over imported
  # checkpoints (a launch, a report, a design) names them by their content.
  cache = pathlib.Path(os.environ.get("SCALING_HASH_CACHE", os.path.expanduser("~/.cache/scaling/sha256")))
  entry = cache / hashlib.sha256(f"{os.path.realpath(file)}|{size}|{mtime_ns}".encode()).hexdigest()
  try:
    stored = entry.read_text()
    if re.fullmatch(r"[0-9a-f]{64}", stored):
      return stored
  except OSError:
    pass
  digest = hashlib.sha256()
  with open(file, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 24), b""):
      digest.update(chunk)
  try:  # Written whole or not at all; a cache that cannot be written only costs the next hash.
    cache.mkdir(parents=True, exist_ok=True)
    partial = entry.with_name(f"{entry.name}.{os.getpid()}.tmp")
    partial.write_text(digest.hexdigest())
    os.replace(partial, entry)
  except OSError:
    pass
  return digest.hexdigest()


def _file_id(file: epath.Path) -> str:
  """A file's content identity: its SHA-256 locally, the store's checksum on gs:// (no download)."""
  if file.as_uri().startswith("file://"):
    stat = os.stat(file)
    return _sha256(str(file), stat.st_size, stat.st_mtime_ns)
  import fsspec  # Remote stores keep a checksum of every object.

  fs, name = fsspec.core.url_to_fs(str(file))
  info = fs.info(name)
  return str(info.get("md5Hash") or info.get("crc32c") or info.get("etag") or info["size"])


def content_id(path: str | epath.Path) -> str:
  """The identity of a model folder's content (config.json and every weights file): a changed
  checkpoint gets a new identity, so the runs built on it are new runs."""
  folder = epath.Path(path)
  files = [folder / "config.json"] + Tensors(folder).files
  return hashlib.sha256("|".join(f"{f.name}:{_file_id(f)}" for f in files).encode()).hexdigest()[:16]


# --- Import ----------------------------------------------------------------------------------------


def _dotted(path: Path) -> str:
  return ".".join(map(str, path))


def read_params(path: str | epath.Path, cfg: model_lib.ModelConfig, shardings: dict, kind: str | None = None) -> dict:
  """The parameters (a pure state dict, as `shardings`) of a model folder, each device reading its slice."""
  kind = kind or read_config(path)["model_type"]
  tensors, slots = Tensors(path), layout(kind, cfg)
  used = {slot.name for slot in slots.values()} | ({"lm_head.weight"} if cfg.tie_embeddings else set())
  extra = [n for n in tensors.entries if n not in used and not n.endswith(_BUFFERS)]
  if extra:
    raise ValueError(
      f"{path}: tensor {extra[0]} is not part of a {kind} model with this config.json "
      f"({len(extra)} such tensors); is config.json the one written with these weights?"
    )
  params = {}
  for ours, sharding in traverse_util.flatten_dict(shardings).items():
    slot = slots[ours]
    if slot.name not in tensors:
      raise ValueError(
        f"{path}: tensor {slot.name} is missing; a {kind} model with this config.json needs it "
        f"(for our {_dotted(ours)})"
      )
    stored = tensors[slot.name]
    if stored.shape != slot.shape:
      raise ValueError(
        f"{path}: tensor {slot.name} has shape {list(stored.shape)}; this config.json needs {list(slot.shape)}"
      )
    x = slot.view(stored)
    params[ours] = jax.make_array_from_callback(x.shape, sharding, lambda index, x=x: np.asarray(x[index], np.float32))
  return traverse_util.unflatten_dict(params)


def _single_device_mesh() -> jax.sharding.Mesh:
  return mesh_lib.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])


def load(
  path: str | epath.Path, mesh: jax.sharding.Mesh | None = None, rules: mesh_lib.Rules | None = None, **overrides
) -> model_lib.Transformer:
  """A Hugging Face model folder as our Transformer, its parameters born sharded on `mesh` under
  `rules` (default: one device); `overrides` set ModelConfig fields such as compute_dtype."""
  hf = read_config(path)
  cfg = model_config(hf, **overrides)
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: model_lib.Transformer(cfg, nnx.Rngs(0))))
  shardings = mesh_lib.state_shardings(abstract, mesh or _single_device_mesh(), rules or mesh_lib.DEFAULT_RULES)
  params = read_params(path, cfg, shardings, hf["model_type"])
  nnx.replace_by_pure_dict(abstract, params)
  return nnx.merge(graphdef, abstract)


# The files that hold a tokenizer's vocabulary (fast, SentencePiece, or BPE vocabulary and merges).
VOCABULARY_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def has_tokenizer(path: str | epath.Path) -> bool:
  """Whether a model folder holds a tokenizer's vocabulary."""
  return any((epath.Path(path) / name).exists() for name in VOCABULARY_FILES)


def tokenizer(path: str | epath.Path):
  """The folder's tokenizer, through `transformers.AutoTokenizer` from local files only."""
  from transformers import AutoTokenizer  # Heavy: imported only by the studies that use real text.

  if not has_tokenizer(path):
    raise ValueError(
      f"{path}: no tokenizer ({' or '.join(VOCABULARY_FILES)}); a model folder exported without one "
      "cannot say how text becomes its token ids"
    )
  try:
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
  except (OSError, ValueError) as e:
    raise ValueError(f"{path}: no tokenizer that transformers.AutoTokenizer can load ({e})") from None


@functools.lru_cache(maxsize=16)
def _vocabulary(path: str, stamp: tuple) -> dict[str, int]:
  del stamp  # Part of the cache key only.
  return dict(tokenizer(path).get_vocab())


def vocabulary(path: str | epath.Path) -> dict[str, int]:
  """A folder's tokenizer's vocabulary (token -> id), read once while its files stay the same."""
  files = [epath.Path(path) / name for name in VOCABULARY_FILES]
  return _vocabulary(str(path), tuple(_file_id(f) for f in files if f.exists()))


# --- Export ----------------------------------------------------------------------------------------


def _family_of(cfg: model_lib.ModelConfig) -> str:
  """The Hugging Face family that can hold a model of `cfg` (the architecture decides)."""
  if cfg.norm == "layer" and cfg.mlp != "swiglu":
    return "gpt_neox"
  if cfg.use_bias == ("qkv",) or cfg.use_bias == ["qkv"]:
    return "qwen2"
  return "llama"


# The fields that make an architecture (the rest say how it computes: dtype, kernels, remat).
ARCHITECTURE = (
  "vocab_size",
  "d_model",
  "n_layers",
  "n_heads",
  "kv_heads",
  "head_width",
  "ff_width",
  "norm",
  "norm_eps",
  "mlp",
  "rotary_dims",
  "rope_theta",
  "parallel_residual",
  "tie_embeddings",
)


def hf_config(cfg: model_lib.ModelConfig, kind: str, like: dict | None = None) -> dict:
  """A config.json for `cfg` in family `kind`, keeping `like`'s other fields (token ids and such).
  It is read back as an import would read it: a field the family cannot express is an error."""
  out = {
    k: v
    for k, v in (like or {}).items()
    if k not in ("rope_scaling", "rotary_pct", "rotary_emb_base", "rope_theta", "torch_dtype", "dtype")
  }
  out.update(
    model_type=kind,
    vocab_size=cfg.vocab_size,
    hidden_size=cfg.d_model,
    num_hidden_layers=cfg.n_layers,
    num_attention_heads=cfg.n_heads,
    intermediate_size=cfg.ff_width,
    tie_word_embeddings=cfg.tie_embeddings,
    rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
    dtype="float32",
  )
  if kind == "gpt_neox":
    out["rope_parameters"]["partial_rotary_factor"] = cfg.rotary_dims / cfg.head_width
    out.update(
      architectures=["GPTNeoXForCausalLM"],
      hidden_act="gelu" if cfg.mlp == "gelu_exact" else "gelu_new",
      layer_norm_eps=cfg.norm_eps,
      use_parallel_residual=cfg.parallel_residual,
      attention_bias=cfg.has_bias("qkv"),
    )
  else:
    out.update(
      architectures=["LlamaForCausalLM" if kind == "llama" else "Qwen2ForCausalLM"],
      hidden_act="silu",
      num_key_value_heads=cfg.kv_heads,
      head_dim=cfg.head_width,
      rms_norm_eps=cfg.norm_eps,
    )
    if kind == "llama":
      out.update(attention_bias=cfg.has_bias("qkv"), mlp_bias=cfg.has_bias("mlp"))
  back = model_config(out)
  wrong = [f for f in ARCHITECTURE if getattr(back, f) != getattr(cfg, f)]
  wrong += [f"use_bias ({part})" for part in model_lib.BIAS_PARTS if back.has_bias(part) != cfg.has_bias(part)]
  if wrong:
    field = wrong[0].split(" ")[0]
    raise ValueError(
      f"a {kind} checkpoint cannot hold model.{field}={getattr(cfg, field)!r} (it would read back "
      f"as {getattr(back, field)!r}); differing: {wrong}"
    )
  return out


def _stored(kind: str, cfg: model_lib.ModelConfig, params: dict[Path, np.ndarray]) -> dict[str, np.ndarray]:
  """Our parameters (whole, on the host) as the tensors of a `kind` checkpoint."""
  out: dict[str, np.ndarray] = {}
  for ours, slot in layout(kind, cfg).items():
    buffer = out.setdefault(slot.name, np.zeros(slot.shape, np.float32))
    slot.view(buffer)[...] = params[ours]  # The import's view, written through.
  return out


def _effective_weights(model: nnx.Module, paths: list[Path]) -> dict[Path, np.ndarray]:
  """Each parameter as the model reads it (LoRA and SVF folded in), whole on the host."""
  graphdef, state = nnx.split(model)

  def read(state):  # One program: eager arithmetic on global arrays can deadlock across hosts.
    module = nnx.merge(graphdef, state)
    out = {}
    for path in paths:
      node = module
      for key in path:
        node = node[key] if isinstance(key, int) else getattr(node, key)
      out[_dotted(path)] = node[...]
    return out

  weights = jax.jit(read)(state)
  return {path: mesh_lib.to_host(weights[_dotted(path)]) for path in paths}


def save(
  model: nnx.Module, path: str | epath.Path, like: str | epath.Path | None = None, dtype: str = "float32"
) -> None:
  """Writes `model` as a Hugging Face folder (config.json, model.safetensors) that `transformers`
  loads; LoRA and SVF weights are merged. `like`, a model folder or a family name (default: the one
  that fits the architecture), gives the family, its other config fields and its tokenizer files."""
  if hasattr(model, "module"):  # A decode.Model.
    model = model.module()
  if hasattr(model, "model"):  # Prompt tuning and LoReFT wrap the base model.
    raise ValueError(
      f"a {type(model).__name__} changes the model's activations, not its weights: it cannot be "
      "saved as a Hugging Face checkpoint; allowed: the bare model, full, lora and svf fine-tunes"
    )
  if dtype not in ("float32", "float16", "bfloat16"):
    raise ValueError(f"dtype={dtype!r}; allowed: 'float32', 'float16', 'bfloat16'")
  cfg, like_cfg = model.cfg, None
  if like is not None and str(like) not in FAMILIES:
    like_cfg = read_config(like)
  kind = like_cfg["model_type"] if like_cfg else (str(like) if like else _family_of(cfg))
  config = hf_config(cfg, kind, like_cfg)
  config["dtype"] = dtype
  slots = layout(kind, cfg)
  tensors = _stored(kind, cfg, _effective_weights(model, list(slots)))
  if jax.process_index() != 0:
    return
  path = epath.Path(path)
  # A local folder is written whole, then moved into place: no half-written folder. A bucket has no
  # folder rename (gcsfs copies object by object), so there the files go in place, config.json last:
  # every reader opens it first.
  in_place = str(path).startswith("gs://")
  out = path if in_place else path.parent / f".{path.name}.tmp"
  if out.exists():
    out.rmtree()
  out.mkdir(parents=True)
  write_safetensors(
    {k: v.astype(DTYPES[{"float32": "F32", "float16": "F16", "bfloat16": "BF16"}[dtype]]) for k, v in tensors.items()},
    out / SINGLE,
  )
  for name in TOKENIZER_FILES if like_cfg else ():
    if (epath.Path(like) / name).exists():
      (epath.Path(like) / name).copy(out / name)
  (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
  if not in_place:
    if path.exists():
      path.rmtree()
    out.rename(path)
