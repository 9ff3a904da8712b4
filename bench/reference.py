"""The plain-JAX reference that the train benchmark holds our model against: the ladder's default
architecture (RMSNorm, RoPE attention, SwiGLU, tied embeddings) written as pure functions of our
parameter dict, with the same compute dtype, attention kernel and remat policy."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from scaling import model as model_lib


def _norm(x_BxLxD: jax.Array, scale_D: jax.Array, eps: float) -> jax.Array:
  """RMSNorm in float32, returned in the input's dtype."""
  x = x_BxLxD.astype(jnp.float32)
  return (x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + eps) * scale_D).astype(x_BxLxD.dtype)


def _rope(x_BxLxNxH: jax.Array, theta: float) -> jax.Array:
  """RoPE on whole heads: (first half, second half) pairs rotated as complex numbers."""
  seq, h = x_BxLxNxH.shape[1], x_BxLxNxH.shape[-1]
  angle_LxR = jnp.arange(seq, dtype=jnp.float32)[:, None] * theta ** (-jnp.arange(0, h, 2, dtype=jnp.float32) / h)
  x = x_BxLxNxH.astype(jnp.float32)
  z_BxLxNxR = jax.lax.complex(x[..., : h // 2], x[..., h // 2 :]) * jnp.exp(1j * angle_LxR)[:, None, :]
  return jnp.concatenate([z_BxLxNxR.real, z_BxLxNxR.imag], -1).astype(x_BxLxNxH.dtype)


def _block(cfg: model_lib.ModelConfig, attention: str, p: dict, x_BxLxD: jax.Array) -> jax.Array:
  """One pre-norm layer: x + attention(norm(x)), then + SwiGLU(norm(x))."""
  dt, a, m = x_BxLxD.dtype, p["attn"], p["mlp"]
  h_BxLxD = _norm(x_BxLxD, p["norm_attn"]["scale"], cfg.norm_eps)
  q, k, v = (jnp.einsum("bld,dnh->blnh", h_BxLxD, a[w].astype(dt)) for w in ("wq", "wk", "wv"))
  o_BxLxNxH = jax.nn.dot_product_attention(
    _rope(q, cfg.rope_theta), _rope(k, cfg.rope_theta), v, is_causal=True, implementation=attention
  )
  x_BxLxD = x_BxLxD + jnp.einsum("blnh,nhd->bld", o_BxLxNxH, a["wo"].astype(dt))
  h_BxLxD = _norm(x_BxLxD, p["norm_mlp"]["scale"], cfg.norm_eps)
  h_BxLxF = jax.nn.silu(h_BxLxD @ m["w_gate"].astype(dt)) * (h_BxLxD @ m["w_up"].astype(dt))
  return x_BxLxD + h_BxLxF @ m["w_down"].astype(dt)


def loss(cfg: model_lib.ModelConfig, params: dict, batch: dict) -> jax.Array:
  """Weighted mean next-token loss of the reference, from parameters as `from_ours` gives them."""
  scan = model_lib.scans_layers(cfg)
  block = functools.partial(_block, cfg, model_lib.attention_implementation(cfg))
  if cfg.remat != "none":
    block = jax.checkpoint(block, policy=model_lib.REMAT_POLICIES[cfg.remat], prevent_cse=not scan)
  x_BxLxD = params["embed"][batch["inputs"]].astype(model_lib.compute_dtype_of(cfg))
  if scan:
    x_BxLxD = jax.lax.scan(lambda x, p: (block(p, x), None), x_BxLxD, params["blocks"])[0]
  else:
    for i in range(cfg.n_layers):
      x_BxLxD = block(params["blocks"][i], x_BxLxD)
  x_BxLxD = _norm(x_BxLxD, params["norm_out"]["scale"], cfg.norm_eps)
  logits_BxLxV = jnp.einsum(
    "bld,vd->blv", x_BxLxD, params["embed"].astype(x_BxLxD.dtype), preferred_element_type=jnp.float32
  )
  losses_BxL = optax.softmax_cross_entropy_with_integer_labels(logits_BxLxV, batch["targets"])
  return (losses_BxL * batch["weights"]).sum() / batch["weights"].sum()


def from_ours(cfg: model_lib.ModelConfig, params: dict) -> dict:
  """Our parameters (a pure dict) as the reference keeps them: where layers are scanned, the blocks'
  weights stacked on a leading layer axis once, as a plain JAX model that scans would hold them."""
  if not model_lib.scans_layers(cfg):
    return params
  blocks = [params["blocks"][i] for i in range(cfg.n_layers)]
  return {**params, "blocks": jax.tree.map(lambda *layers: jnp.stack(layers), *blocks)}


def step(cfg: model_lib.ModelConfig, tx: optax.GradientTransformation, state: dict, batch: dict) -> tuple[dict, dict]:
  """One optimiser step of the reference; its state is {"params", "opt"}."""
  value, grads = jax.value_and_grad(loss, argnums=1)(cfg, state["params"], batch)
  updates, opt = tx.update(grads, state["opt"], state["params"])
  return {"params": optax.apply_updates(state["params"], updates), "opt": opt}, {"loss": value}
