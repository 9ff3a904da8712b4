"""Flax NNX decoder-only Transformer, its size ladder, and exact parameter and FLOP counts.

Tensor names carry their shapes: B batch, L length, D model width, N query heads, K key/value
heads, H head width, F MLP width, V vocabulary. Every parameter carries logical axis names
(`logical_axes` metadata); `scaling.mesh` maps them to mesh axes, outside the model math.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from scaling import mesh as mesh_lib


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """The architecture of one decoder; the knobs cover Pythia-, Llama- and Qwen-style blocks."""

  vocab_size: int
  d_model: int
  n_layers: int
  n_heads: int
  n_kv_heads: int | None = None  # None: as many as n_heads (no grouping).
  head_dim: int | None = None  # None: d_model // n_heads.
  d_ff: int | None = None  # None: 4 * d_model for GELU, 8/3 * d_model (rounded to 8) for SwiGLU.
  norm: Literal["rms", "layer"] = "rms"
  norm_eps: float = 1e-5
  mlp: Literal["swiglu", "gelu", "gelu_exact"] = "swiglu"  # gelu: tanh approximation; gelu_exact: erf.
  rotary_fraction: float = 1.0
  rope_theta: float = 10_000.0
  use_bias: bool | tuple[str, ...] = False  # True: every projection; or the parts in BIAS_PARTS that have one.
  parallel_residual: bool = False
  tie_embeddings: bool = True
  # auto: bfloat16 on accelerators, float32 on CPUs. Parameters, gradients and the loss stay float32.
  compute_dtype: Literal["auto", "float32", "bfloat16"] = "auto"
  attention: Literal["auto", "xla", "cudnn"] = "auto"  # auto: cudnn where it applies, else xla.
  remat: Literal["none", "dots", "full"] = "none"  # What each block keeps for the backward pass.
  layer_loop: Literal["auto", "unrolled", "scan"] = "auto"  # auto: scan on accelerators, unrolled on CPUs.
  init_std: float = 0.02

  def __post_init__(self):
    if isinstance(self.use_bias, list):  # From JSON: a tuple keeps the config hashable.
      object.__setattr__(self, "use_bias", tuple(self.use_bias))

  def has_bias(self, part: str) -> bool:
    """Whether the projections of `part` (one of BIAS_PARTS) have biases."""
    return self.use_bias is True or (not isinstance(self.use_bias, bool) and part in self.use_bias)

  @property
  def kv_heads(self) -> int:
    return self.n_kv_heads or self.n_heads

  @property
  def head_width(self) -> int:
    return self.head_dim or self.d_model // self.n_heads

  @property
  def ff_width(self) -> int:
    if self.d_ff:
      return self.d_ff
    if self.mlp != "swiglu":
      return 4 * self.d_model
    return 8 * ((8 * self.d_model // 3 + 7) // 8)

  @property
  def rotary_dims(self) -> int:
    return 2 * int(self.head_width * self.rotary_fraction / 2)

  def validate(self) -> None:
    """Raises ValueError naming the field if the architecture is inconsistent."""
    if self.n_heads % self.kv_heads:
      raise ValueError(f"model.n_kv_heads={self.kv_heads} must divide model.n_heads={self.n_heads}")
    for field, allowed in CHOICES.items():
      if getattr(self, field) not in allowed:
        raise ValueError(f"model.{field}={getattr(self, field)!r}; allowed: {', '.join(map(repr, allowed))}")
    if not isinstance(self.use_bias, bool) and not set(self.use_bias) <= set(BIAS_PARTS):
      raise ValueError(f"model.use_bias={self.use_bias!r}; allowed: True, False, or a subset of {BIAS_PARTS}")
    if not 0.0 <= self.rotary_fraction <= 1.0:
      raise ValueError(f"model.rotary_fraction={self.rotary_fraction}; allowed: 0 to 1")


# Rematerialisation policies: what a block saves for the backward pass; the rest is recomputed.
REMAT_POLICIES = {
  "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # Projection and MLP outputs.
  "full": jax.checkpoint_policies.nothing_saveable,
}  # Only the block's input.

# The projections that may carry biases: q, k and v; the attention output; the MLP's.
BIAS_PARTS = ("qkv", "out", "mlp")

CHOICES: dict[str, tuple[str, ...]] = {
  "norm": ("rms", "layer"),
  "mlp": ("swiglu", "gelu", "gelu_exact"),
  "compute_dtype": ("auto", "float32", "bfloat16"),
  "attention": ("auto", "xla", "cudnn"),
  "remat": ("none", *REMAT_POLICIES),
  "layer_loop": ("auto", "unrolled", "scan"),
}


def compute_dtype_of(cfg: ModelConfig) -> Literal["float32", "bfloat16"]:
  """The dtype of activations and of the weights' copies in matmuls that `cfg.compute_dtype` means
  on the platform (`mesh.platform`)."""
  # Accelerators multiply bfloat16 at several times their float32 rate; a CPU gains nothing from it.
  if cfg.compute_dtype == "auto":
    return "float32" if mesh_lib.platform() == "cpu" else "bfloat16"
  return cfg.compute_dtype


def scans_layers(cfg: ModelConfig) -> bool:
  """Whether `cfg.layer_loop` means one program for all blocks, scanned over their stacked weights,
  for the devices of the active mesh (else the default backend's)."""
  # A compiler's time grows with the blocks unrolled: on an H100, compiling the unrolled 110M step
  # took 106 s and the 1.3B one more than 230 s, with or without XLA's GEMM autotuning. Scanned,
  # one block is compiled. On a CPU unrolled blocks compile and run faster, so auto keeps them.
  return cfg.layer_loop == "scan" or (cfg.layer_loop == "auto" and mesh_lib.platform() != "cpu")


def attention_implementation(cfg: ModelConfig) -> Literal["xla", "cudnn"]:
  """The kernel of causal self-attention that `cfg.attention` means on the platform (`mesh.platform`)."""
  # cuDNN's fused (flash) attention takes 16-bit inputs and head widths that are multiples of 8 up
  # to 128 (256 on Hopper); it saves the attention matrix's memory and most of its time.
  fits = (
    mesh_lib.platform() == "gpu"
    and compute_dtype_of(cfg) == "bfloat16"
    and cfg.head_width % 8 == 0
    and cfg.head_width <= 128
  )
  if cfg.attention == "auto":
    return "cudnn" if fits else "xla"
  if cfg.attention == "cudnn" and not fits:
    raise ValueError(
      f"model.attention='cudnn' needs a GPU, compute_dtype 'bfloat16' and a head width "
      f"that is a multiple of 8 up to 128; here: backend {mesh_lib.platform()!r}, compute_dtype "
      f"{compute_dtype_of(cfg)!r}, head width {cfg.head_width}; allowed here: 'auto', 'xla'"
    )
  return cfg.attention


# The size ladder: name -> (d_model, n_layers, n_heads). Widths double every two rungs.
LADDER: dict[str, tuple[int, int, int]] = {
  "d16l2": (16, 2, 2),
  "d32l2": (32, 2, 2),
  "d48l2": (48, 2, 2),
  "d64l2": (64, 2, 4),
  "d96l3": (96, 3, 4),
  "d128l4": (128, 4, 4),
  "d192l4": (192, 4, 6),
  "d256l6": (256, 6, 8),
  "d512l8": (512, 8, 8),
  "d768l12": (768, 12, 12),
  "d1024l24": (1024, 24, 16),
  "d2048l24": (2048, 24, 16),
  "d2560l32": (2560, 32, 20),
}


def ladder_config(size: str, vocab_size: int, **overrides) -> ModelConfig:
  """The ModelConfig of a named size on the ladder, with block options overridden."""
  if size not in LADDER:
    raise ValueError(f"model size {size!r} is not on the ladder; allowed: {sorted(LADDER)}")
  d, n_layers, n_heads = LADDER[size]
  return ModelConfig(vocab_size=vocab_size, d_model=d, n_layers=n_layers, n_heads=n_heads, **overrides)


def embedding_params(cfg: ModelConfig) -> int:
  """Parameters in the input embedding and (if untied) the output projection."""
  return cfg.vocab_size * cfg.d_model * (1 if cfg.tie_embeddings else 2)


def _block_matmul_params(cfg: ModelConfig) -> int:
  """The weights of one block's matrix multiplications: q, k, v and output projections, and the MLP's."""
  d, h, f = cfg.d_model, cfg.head_width, cfg.ff_width
  return d * h * (cfg.n_heads + 2 * cfg.kv_heads) + cfg.n_heads * h * d + d * f * (3 if cfg.mlp == "swiglu" else 2)


def param_count(cfg: ModelConfig) -> int:
  """Exact number of parameters of the model that `Transformer(cfg)` builds."""
  d, h, f = cfg.d_model, cfg.head_width, cfg.ff_width
  norm = d * (2 if cfg.norm == "layer" else 1)
  biases = (
    (h * (cfg.n_heads + 2 * cfg.kv_heads) if cfg.has_bias("qkv") else 0)
    + (d if cfg.has_bias("out") else 0)
    + (f * (2 if cfg.mlp == "swiglu" else 1) + d if cfg.has_bias("mlp") else 0)
  )
  return embedding_params(cfg) + cfg.n_layers * (2 * norm + _block_matmul_params(cfg) + biases) + norm


def non_embedding_params(cfg: ModelConfig) -> int:
  """Parameters outside the embedding and output projection (Kaplan et al.'s N)."""
  return param_count(cfg) - embedding_params(cfg)


def train_flops_per_token(cfg: ModelConfig, seq_len: int) -> int:
  """Training FLOPs per token: 3x the forward matmuls, attention scores and logits included."""
  matmul = cfg.n_layers * _block_matmul_params(cfg)  # Norms and biases do no matmul.
  attention = 2 * cfg.n_layers * seq_len * cfg.n_heads * cfg.head_width  # QK^T and AV.
  forward = 2 * matmul + 2 * attention + 2 * cfg.d_model * cfg.vocab_size
  return 3 * forward


class KVCache(NamedTuple):
  """One layer's keys and values by absolute position: (B, S, K, H) each."""

  k: jax.Array
  v: jax.Array


def _param(rngs: nnx.Rngs, shape: tuple[int, ...], names: tuple[str, ...], std: float | None) -> nnx.Param:
  """A parameter of `shape` with logical axis `names`; std None means ones, 0 means zeros."""
  if std is None:
    value = jnp.ones(shape, jnp.float32)
  elif std == 0:
    value = jnp.zeros(shape, jnp.float32)
  else:
    value = std * jax.random.normal(rngs.params(), shape, jnp.float32)
  # Our own metadata key: Flax leaves it alone, and scaling.mesh maps it to shardings by rules.
  return nnx.Param(value, logical_axes=names)


class Norm(nnx.Module):
  """RMSNorm or LayerNorm over the last axis, computed in float32."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.kind, self.eps = cfg.norm, cfg.norm_eps
    self.scale = _param(rngs, (cfg.d_model,), ("embed",), None)
    self.bias = _param(rngs, (cfg.d_model,), ("embed",), 0) if cfg.norm == "layer" else None

  def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
    x = x_BxLxD.astype(jnp.float32)
    if self.kind == "layer":
      x = x - x.mean(-1, keepdims=True)
    x = x * jax.lax.rsqrt((x * x).mean(-1, keepdims=True) + self.eps) * self.scale[...]
    if self.bias is not None:
      x = x + self.bias[...]
    return x.astype(x_BxLxD.dtype)


def rope(x_BxLxNxH: jax.Array, positions_BxL: jax.Array, rot: int, theta: float) -> jax.Array:
  """Rotary embedding on the first `rot` dims of each head (rotate-half convention)."""
  if rot == 0:
    return x_BxLxNxH
  freq = theta ** (-jnp.arange(0, rot, 2, dtype=jnp.float32) / rot)
  angle_BxLx1xR = (positions_BxL[..., None].astype(jnp.float32) * freq)[:, :, None, :]
  x_rot, x_pass = x_BxLxNxH[..., :rot].astype(jnp.float32), x_BxLxNxH[..., rot:]
  x1, x2 = x_rot[..., : rot // 2], x_rot[..., rot // 2 :]
  cos, sin = jnp.cos(angle_BxLx1xR), jnp.sin(angle_BxLx1xR)
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return jnp.concatenate([rotated.astype(x_BxLxNxH.dtype), x_pass], axis=-1)


class Attention(nnx.Module):
  """Causal grouped-query self-attention through jax.nn.dot_product_attention."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.cfg = cfg
    d, n, k, h, std = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.head_width, cfg.init_std
    self.wq = _param(rngs, (d, n, h), ("embed", "heads", "head_dim"), std)
    self.wk = _param(rngs, (d, k, h), ("embed", "kv_heads", "head_dim"), std)
    self.wv = _param(rngs, (d, k, h), ("embed", "kv_heads", "head_dim"), std)
    self.wo = _param(rngs, (n, h, d), ("heads", "head_dim", "embed"), std / (2 * cfg.n_layers) ** 0.5)
    if cfg.has_bias("qkv"):
      self.bq = _param(rngs, (n, h), ("heads", "head_dim"), 0)
      self.bk = _param(rngs, (k, h), ("kv_heads", "head_dim"), 0)
      self.bv = _param(rngs, (k, h), ("kv_heads", "head_dim"), 0)
    if cfg.has_bias("out"):
      self.bo = _param(rngs, (d,), ("embed",), 0)

  def __call__(
    self, x_BxLxD: jax.Array, positions_BxL: jax.Array, cache: KVCache | None = None
  ) -> tuple[jax.Array, KVCache | None]:
    """Attention output; with a cache, the new keys and values are written at `positions_BxL` and
    each query attends to every cached position up to its own (the cache is returned updated)."""
    cfg, dt = self.cfg, x_BxLxD.dtype
    q_BxLxNxH = jnp.einsum("bld,dnh->blnh", x_BxLxD, self.wq[...].astype(dt))
    k_BxLxKxH = jnp.einsum("bld,dkh->blkh", x_BxLxD, self.wk[...].astype(dt))
    v_BxLxKxH = jnp.einsum("bld,dkh->blkh", x_BxLxD, self.wv[...].astype(dt))
    if cfg.has_bias("qkv"):
      q_BxLxNxH += self.bq[...].astype(dt)
      k_BxLxKxH += self.bk[...].astype(dt)
      v_BxLxKxH += self.bv[...].astype(dt)
    # One sharding for q, k and v: cuDNN's partitioner requires it.
    heads = ("act_batch", "act_length", "act_heads", None)
    q_BxLxNxH = mesh_lib.constrain(rope(q_BxLxNxH, positions_BxL, cfg.rotary_dims, cfg.rope_theta), heads)
    k_BxLxKxH = mesh_lib.constrain(rope(k_BxLxKxH, positions_BxL, cfg.rotary_dims, cfg.rope_theta), heads)
    v_BxLxKxH = mesh_lib.constrain(v_BxLxKxH, heads)
    if cache is None:
      out_BxLxNxH = jax.nn.dot_product_attention(
        q_BxLxNxH, k_BxLxKxH, v_BxLxKxH, is_causal=True, implementation=attention_implementation(cfg)
      )
    else:
      # Decoding keeps XLA's kernel: cuDNN's fused one is made for causal and padding masks, not
      # for this mask of cache positions.
      rows_Bx1 = jnp.arange(x_BxLxD.shape[0])[:, None]
      cache = KVCache(
        cache.k.at[rows_Bx1, positions_BxL].set(k_BxLxKxH.astype(cache.k.dtype)),
        cache.v.at[rows_Bx1, positions_BxL].set(v_BxLxKxH.astype(cache.v.dtype)),
      )
      # Slots past a query's position may hold stale or padding entries: they are masked, and
      # overwritten before any later query can see them.
      mask_Bx1xLxS = jnp.arange(cache.k.shape[1])[None, None, None, :] <= positions_BxL[:, None, :, None]
      out_BxLxNxH = jax.nn.dot_product_attention(q_BxLxNxH, cache.k.astype(dt), cache.v.astype(dt), mask=mask_Bx1xLxS)
    out_BxLxD = jnp.einsum("blnh,nhd->bld", out_BxLxNxH, self.wo[...].astype(dt))
    if cfg.has_bias("out"):
      out_BxLxD += self.bo[...].astype(dt)
    return out_BxLxD, cache


class Mlp(nnx.Module):
  """SwiGLU or GELU feed-forward block."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.cfg = cfg
    d, f, std = cfg.d_model, cfg.ff_width, cfg.init_std
    self.w_up = _param(rngs, (d, f), ("embed", "mlp"), std)
    self.w_gate = _param(rngs, (d, f), ("embed", "mlp"), std) if cfg.mlp == "swiglu" else None
    self.w_down = _param(rngs, (f, d), ("mlp", "embed"), std / (2 * cfg.n_layers) ** 0.5)
    if cfg.has_bias("mlp"):
      self.b_up = _param(rngs, (f,), ("mlp",), 0)
      self.b_gate = _param(rngs, (f,), ("mlp",), 0) if cfg.mlp == "swiglu" else None
      self.b_down = _param(rngs, (d,), ("embed",), 0)

  def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
    cfg, dt = self.cfg, x_BxLxD.dtype
    up_BxLxF = x_BxLxD @ self.w_up[...].astype(dt)
    if cfg.has_bias("mlp"):
      up_BxLxF += self.b_up[...].astype(dt)
    if cfg.mlp == "swiglu":
      gate_BxLxF = x_BxLxD @ self.w_gate[...].astype(dt)
      if cfg.has_bias("mlp"):
        gate_BxLxF += self.b_gate[...].astype(dt)
      h_BxLxF = jax.nn.silu(gate_BxLxF) * up_BxLxF
    else:
      h_BxLxF = jax.nn.gelu(up_BxLxF, approximate=cfg.mlp == "gelu")
    h_BxLxF = mesh_lib.constrain(h_BxLxF, ("act_batch", "act_length", "act_mlp"))
    out_BxLxD = h_BxLxF @ self.w_down[...].astype(dt)
    if cfg.has_bias("mlp"):
      out_BxLxD += self.b_down[...].astype(dt)
    return out_BxLxD


# The block parts whose own parameters are read only as compute-dtype copies (`w[...].astype(dt)`).
# The norms read theirs in float32; a method's re-expressed weight (one level deeper, such as LoRA's
# base and adapters) is read its own way.
COMPUTE_DTYPE_PARTS = ("attn", "mlp")


class Block(nnx.Module):
  """One Transformer layer, sequential (x + attn, then + mlp) or parallel (x + attn + mlp)."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.parallel = cfg.parallel_residual
    self.norm_attn, self.attn = Norm(cfg, rngs), Attention(cfg, rngs)
    self.norm_mlp, self.mlp = Norm(cfg, rngs), Mlp(cfg, rngs)

  def __call__(
    self, x_BxLxD: jax.Array, positions_BxL: jax.Array, cache: KVCache | None = None
  ) -> tuple[jax.Array, KVCache | None]:
    attn_BxLxD, cache = self.attn(self.norm_attn(x_BxLxD), positions_BxL, cache)
    if self.parallel:
      x_BxLxD = x_BxLxD + attn_BxLxD + self.mlp(self.norm_mlp(x_BxLxD))
    else:
      x_BxLxD = x_BxLxD + attn_BxLxD
      x_BxLxD = x_BxLxD + self.mlp(self.norm_mlp(x_BxLxD))
    return mesh_lib.constrain(x_BxLxD, ("act_batch", "act_length", "act_embed")), cache


class Transformer(nnx.Module):
  """Decoder-only language model: tokens (B, L) -> next-token logits (B, L, V) in float32."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    cfg.validate()
    self.cfg = cfg
    self.embed = _param(rngs, (cfg.vocab_size, cfg.d_model), ("vocab", "embed"), cfg.init_std)
    self.blocks = nnx.List([Block(cfg, rngs) for _ in range(cfg.n_layers)])
    self.norm_out = Norm(cfg, rngs)
    if not cfg.tie_embeddings:
      self.unembed = _param(rngs, (cfg.d_model, cfg.vocab_size), ("embed", "vocab"), cfg.init_std)

  def embed_tokens(self, tokens_BxL: jax.Array) -> jax.Array:
    """Token embeddings (B, L, D) in the compute dtype."""
    # Gather from a replicated table: XLA cannot gather from a vocab-sharded one efficiently.
    table_VxD = mesh_lib.constrain(self.embed[...], (None, None))
    x_BxLxD = jnp.take(table_VxD, tokens_BxL, axis=0).astype(compute_dtype_of(self.cfg))
    return mesh_lib.constrain(x_BxLxD, ("act_batch", "act_length", "act_embed"))

  def init_cache(self, batch: int, length: int) -> list[KVCache]:
    """An empty key/value cache of `length` positions per layer, in the compute dtype."""
    shape = (batch, length, self.cfg.kv_heads, self.cfg.head_width)
    zeros = lambda: jnp.zeros(shape, compute_dtype_of(self.cfg))
    return [KVCache(zeros(), zeros()) for _ in self.blocks]

  def forward_embeddings(
    self,
    x_BxLxD: jax.Array,
    positions_BxL: jax.Array | None = None,
    cache: list[KVCache] | None = None,
    after_block: Callable[[int, jax.Array], jax.Array] | None = None,
    hidden: bool = False,
  ) -> tuple[jax.Array, list[KVCache] | None]:
    """Logits from input embeddings (the entry point for methods that edit the input), and the
    cache updated with these positions if one is given (positions default to 0..L-1).
    `after_block(i, x)`, if given, edits the hidden states after block i (methods that edit them).
    `hidden`: the final normalised hidden states (B, L, D) instead of logits (see `logits`)."""
    b, seq_len = x_BxLxD.shape[:2]
    if positions_BxL is None:
      positions_BxL = jnp.broadcast_to(jnp.arange(seq_len), (b, seq_len))
    if cache is None and after_block is None and scans_layers(self.cfg):
      scanned_BxLxD = self._scan_blocks(x_BxLxD, positions_BxL)
      if scanned_BxLxD is not None:
        x_BxLxD = self.norm_out(scanned_BxLxD)
        return x_BxLxD if hidden else self.logits(x_BxLxD), None
    run_block = Block.__call__
    if self.cfg.remat != "none":
      run_block = nnx.remat(run_block, policy=REMAT_POLICIES[self.cfg.remat])
    new_cache = []
    for i, block in enumerate(self.blocks):
      x_BxLxD, layer_cache = run_block(block, x_BxLxD, positions_BxL, None if cache is None else cache[i])
      if after_block is not None:
        x_BxLxD = after_block(i, x_BxLxD)
      new_cache.append(layer_cache)
    x_BxLxD = self.norm_out(x_BxLxD)
    return x_BxLxD if hidden else self.logits(x_BxLxD), None if cache is None else new_cache

  def _scan_blocks(self, x_BxLxD: jax.Array, positions_BxL: jax.Array) -> jax.Array | None:
    """The blocks' output, as one block program scanned over their stacked variables; None where
    the blocks differ in structure (a method that changes some of them), so they run unrolled."""
    splits = [nnx.split(block) for block in self.blocks]
    graphdef = splits[0][0]
    if any(other != graphdef for other, _ in splits[1:]):
      return None

    def apply(x_BxLxD: jax.Array, state: nnx.State) -> tuple[jax.Array, None]:
      return Block.__call__(nnx.merge(graphdef, state), x_BxLxD, positions_BxL)[0], None

    if self.cfg.remat != "none":
      # No CSE to prevent: a scan's body is not merged with the rest of the program.
      apply = jax.checkpoint(apply, policy=REMAT_POLICIES[self.cfg.remat], prevent_cse=False)
    dt = compute_dtype_of(self.cfg)

    def stack(path, *layers: jax.Array) -> jax.Array:
      # The stacked copy of the weights is made in the step itself. Weights that the block reads only
      # as compute-dtype copies are stacked as those copies: in bfloat16 the stack (and its gradient)
      # is half the size, and it replaces the cast that unrolled blocks make, so no extra pass.
      keys = tuple(k.key for k in path if isinstance(k, jax.tree_util.DictKey))
      cast = len(keys) == 2 and keys[0] in COMPUTE_DTYPE_PARTS
      return jnp.stack([x.astype(dt) if cast else x for x in layers])

    stacked = jax.tree_util.tree_map_with_path(stack, *(state for _, state in splits))
    return jax.lax.scan(apply, x_BxLxD, stacked)[0]

  def logits(self, x_BxLxD: jax.Array) -> jax.Array:
    """Next-token logits (B, L, V) in float32 from final hidden states (B, L, D)."""
    # Float32 accumulation and logits from compute-dtype operands: bfloat16 logits would carry a
    # rounding error of 0.4% of their size into the loss.
    if self.cfg.tie_embeddings:
      logits_BxLxV = jnp.einsum(
        "bld,vd->blv", x_BxLxD, self.embed[...].astype(x_BxLxD.dtype), preferred_element_type=jnp.float32
      )
    else:
      logits_BxLxV = jnp.matmul(x_BxLxD, self.unembed[...].astype(x_BxLxD.dtype), preferred_element_type=jnp.float32)
    return mesh_lib.constrain(logits_BxLxV, ("act_batch", "act_length", "act_vocab"))

  def extend(
    self, tokens_BxT: jax.Array, positions_BxT: jax.Array, cache: list[KVCache], prompt_len_B: jax.Array | None = None
  ) -> tuple[jax.Array, list[KVCache]]:
    """Logits of T new tokens at their positions, attending to the cache; and the updated cache.
    Every model takes each row's prompt length; only methods that act at prompt positions use it."""
    del prompt_len_B
    return self.forward_embeddings(self.embed_tokens(tokens_BxT), positions_BxT, cache)

  def __call__(self, tokens_BxL: jax.Array, prompt_len_B: jax.Array | None = None, hidden: bool = False) -> jax.Array:
    """Logits (B, L, V) of every position; with `hidden`, the final hidden states (B, L, D)."""
    del prompt_len_B  # See `extend`.
    return self.forward_embeddings(self.embed_tokens(tokens_BxL), hidden=hidden)[0]
