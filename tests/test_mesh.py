"""Mesh shapes and the sharded train step: 8 fake CPU devices give the unsharded loss and grads."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from scaling import mesh as mesh_lib
from scaling import model as model_lib
from scaling import train


def test_resolve_shape():
  assert mesh_lib.resolve_shape({"data": -1}, 8) == (8, 1, 1)
  assert mesh_lib.resolve_shape({"data": 2, "fsdp": -1, "tensor": 2}, 8) == (2, 2, 2)
  assert mesh_lib.resolve_shape({"data": 2}, 8) == (2, 1, 1)  # A divisor of the devices is allowed.
  with pytest.raises(ValueError, match="does not divide"):
    mesh_lib.resolve_shape({"data": 3}, 8)
  with pytest.raises(ValueError, match="unknown axes"):
    mesh_lib.resolve_shape({"model": 2}, 8)
  with pytest.raises(ValueError, match="at most one axis"):
    mesh_lib.resolve_shape({"data": -1, "fsdp": -1}, 8)


def test_rules_map_logical_names():
  assert mesh_lib.spec(("embed", "mlp")) == jax.sharding.PartitionSpec("fsdp", "tensor")
  assert mesh_lib.batch_axes(mesh_lib.DEFAULT_RULES) == ("data", "fsdp")


def _step_outputs(mesh, params, graphdef, batch):
  """Loss and gradients of one train step run under `mesh` with the default rules."""
  rules = mesh_lib.DEFAULT_RULES
  with mesh_lib.activate(mesh, rules):
    abstract = nnx.state(nnx.eval_shape(lambda: nnx.merge(graphdef, params)))
    shardings = mesh_lib.state_shardings(abstract, mesh, rules)
    sharded = jax.device_put(params, shardings)
    batch = jax.device_put(batch, mesh_lib.batch_sharding(mesh, rules))

    def loss_of(p):
      logits = nnx.merge(graphdef, p)(batch["inputs"])
      total, count = train.evaluate.weighted_cross_entropy(logits, batch["targets"], batch["weights"])
      return total / count

    loss, grads = jax.jit(jax.value_and_grad(loss_of))(sharded)
    return loss, grads, jax.tree.leaves(sharded)


@pytest.mark.parametrize("layer_loop", ["unrolled", "scan"])
def test_sharded_step_equals_unsharded(layer_loop):
  assert jax.device_count() == 8
  cfg = model_lib.ladder_config("d64l2", vocab_size=128, n_kv_heads=2, layer_loop=layer_loop)
  graphdef, params = nnx.split(model_lib.Transformer(cfg, nnx.Rngs(0)))
  params = nnx.to_pure_dict(params)
  tokens = jax.random.randint(jax.random.key(1), (8, 17), 0, 128)
  weights = (jax.random.uniform(jax.random.key(2), (8, 16)) > 0.3).astype(jnp.float32)
  batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "weights": weights}

  loss1, grads1, _ = _step_outputs(mesh_lib.make_mesh({"data": 1}), params, graphdef, batch)
  mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  loss8, grads8, leaves = _step_outputs(mesh, params, graphdef, batch)

  # The weights really are split over devices: FSDP over the embed axis, tensor over heads.
  wq = params["blocks"][0]["attn"]["wq"]
  sharded_wq = [x for x in leaves if x.shape == wq.shape][0]
  assert sharded_wq.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor", None)
  assert len(sharded_wq.addressable_shards) == 8 and sharded_wq.addressable_shards[0].data.shape == (32, 2, 16)
  np.testing.assert_allclose(float(loss8), float(loss1), rtol=1e-6)
  for g8, g1 in zip(jax.tree.leaves(grads8), jax.tree.leaves(grads1)):
    np.testing.assert_allclose(np.asarray(g8), np.asarray(g1), rtol=1e-4, atol=1e-7)


def test_the_active_meshs_devices_name_the_platform(monkeypatch):
  """Programs compiled ahead of time for a TPU slice are traced on a CPU host: the mesh's devices
  decide what `auto` options mean (here, a GPU default backend against a mesh of CPU devices);
  an explicit choice holds everywhere."""
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  auto = model_lib.ladder_config("d32l2", 64)
  assert mesh_lib.platform() == "gpu" and model_lib.scans_layers(auto)
  assert model_lib.compute_dtype_of(auto) == "bfloat16"
  with mesh_lib.activate(mesh_lib.make_mesh({"data": -1})):
    assert mesh_lib.platform() == "cpu" and not model_lib.scans_layers(auto)
    assert model_lib.compute_dtype_of(auto) == "float32"
  assert model_lib.compute_dtype_of(model_lib.ladder_config("d32l2", 64, compute_dtype="float32")) == "float32"


def test_constrain_is_noop_outside_a_mesh():
  x = jnp.ones((4, 4))
  assert mesh_lib.constrain(x, ("act_batch", None)) is x


def test_global_batch_builds_each_device_rows_from_only_its_part():
  mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  batch = {"inputs": np.arange(8 * 3).reshape(8, 3), "prompt_len": np.arange(8, dtype=np.int32)}
  asked = []

  def rows(part):
    asked.append((part.start, part.stop))
    return {k: v[part] for k, v in batch.items()}

  arrays = mesh_lib.global_batch(rows, 8, mesh, mesh_lib.DEFAULT_RULES)
  assert sorted(asked) == [(0, 2), (2, 4), (4, 6), (6, 8)]  # Once per row block, not per device.
  for key, value in batch.items():
    np.testing.assert_array_equal(np.asarray(arrays[key]), value)
    assert arrays[key].sharding.is_equivalent_to(
      mesh_lib.batch_sharding(mesh, mesh_lib.DEFAULT_RULES, value.ndim), value.ndim
    )
  with mesh_lib.activate(mesh):  # The active mesh is the default.
    assert mesh_lib.global_batch(rows, 8)["inputs"].sharding.mesh == mesh
  outside = mesh_lib.global_batch(rows, 8)  # No mesh: one device, whole rows.
  np.testing.assert_array_equal(np.asarray(outside["inputs"]), batch["inputs"])
  assert asked[-1] == (0, 8)
