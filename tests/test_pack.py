"""Fine-tunes packed as lanes of one program end where each ends alone, and a killed pack resumes."""

import json
import shutil

import numpy as np
import pytest
from conftest import tiny_study
from test_metric_writers import assert_events_match_metrics

from launch import local
from scaling import grid, kinds, results
from scaling import run as run_lib
from scaling import study as study_lib
from scaling.data import pipeline

TOL = 1e-4  # Relative: a vmapped step sums in another order than the step of one run.
# Four fine-tunes of one base: two D_f, and two learning rates whose faster one stops early.
STUDY = {
  "finetune.d_f": (8, 32),
  "finetune.methods": ({"name": "full", "learning_rate": (1e-3, 0.01)},),
  "finetune.train.max_steps": 30,
  "finetune.train.patience": 1,
  "pretrain.train.checkpoint_every": 20,  # The base's only checkpoint at its end: nothing resumes it.
}


def _plan(workdir, pack, data=1):
  """The study's runs, planned in `workdir`; packs on a mesh of `data` devices split their lanes over them."""
  study = study_lib.validate(tiny_study(**{**STUDY, "finetune.pack": pack, "mesh.shape.data": data}), 8)
  runs = kinds.expand(study)
  local.write_plan(study, runs, workdir)
  return runs


def _lines(workdir, run):
  return [json.loads(line) for line in (workdir / "runs" / run.id / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def alone_and_packed(tmp_path_factory):
  alone, packed = tmp_path_factory.mktemp("alone"), tmp_path_factory.mktemp("packed")
  runs = _plan(alone, 1)
  assert [len(g) for g in run_lib.packs(runs)] == [1] * 5
  for r in runs:
    run_lib.execute(r, alone)
  packed_runs = _plan(packed, 8, data=2)  # Two lanes on each of two devices.
  assert [r.id for r in packed_runs] == [r.id for r in runs]  # Packing is how runs execute, not what they compute.
  runs = packed_runs
  shutil.copytree(alone / "runs" / runs[0].id, packed / "runs" / runs[0].id, dirs_exist_ok=True)  # The shared base.
  groups = run_lib.packs(runs)
  assert [len(g) for g in groups] == [1, 4]
  for group in groups:
    run_lib.execute_pack(group, packed)
  return alone, packed, runs


@pytest.mark.slow
def test_packed_fine_tunes_end_where_each_ends_alone(alone_and_packed):
  alone, packed, runs = alone_and_packed
  steps = set()
  for run in runs[1:]:
    a, b = (results.read_result(w / "runs" / run.id) for w in (alone, packed))
    for key, value in a["train"].items():  # Steps, best step and whether the cap was hit: equal.
      if "seconds" not in key:
        assert b["train"][key] == (pytest.approx(value, rel=TOL) if isinstance(value, float) else value), (run.id, key)
    assert set(a["metrics"]) == set(b["metrics"])
    for key, value in a["metrics"].items():
      assert b["metrics"][key] == pytest.approx(value, rel=TOL, abs=TOL), (run.id, key)
    for x, y in zip(a["layer_change"], b["layer_change"], strict=True):
      np.testing.assert_allclose(y, x, rtol=TOL, atol=TOL)
    la, lb = _lines(alone, run), _lines(packed, run)
    assert [sorted(r) for r in la] == [sorted(r) for r in lb] and [r["step"] for r in la] == [r["step"] for r in lb]
    for ra, rb in zip(la, lb):
      for key in ra:
        assert rb[key] == pytest.approx(ra[key], rel=TOL), (run.id, ra["step"], key)
    assert_events_match_metrics(packed / "runs" / run.id)  # One event folder per lane.
    steps.add(a["train"]["steps"])
  assert len(steps) > 1 and max(steps) == 30  # Lanes stopped early while others ran on.


def test_pack_sizes_follow_the_limit_and_the_key(tmp_path):
  runs = _plan(tmp_path, 3)
  assert [len(g) for g in run_lib.packs(runs)] == [1, 3, 1]
  last = runs[-1]
  other = grid.Run(last.id + "x", last.kind, {**last.config, "task": "other"}, last.deps, last.execution)
  assert [len(g) for g in run_lib.packs([*runs[:3], other])] == [1, 2, 1]  # Another task: another program.


@pytest.mark.slow
def test_killed_pack_resumes_to_the_same_end(alone_and_packed, tmp_path, monkeypatch, capsys):
  _, packed, runs = alone_and_packed
  killed = tmp_path / "killed"
  assert _plan(killed, 8, data=2) == runs
  shutil.copytree(packed / "runs" / runs[0].id, killed / "runs" / runs[0].id, dirs_exist_ok=True)
  group = run_lib.packs(runs)[1]
  rows = pipeline.StepBatches.rows

  def dies_at_step_15(self, step, part):
    if step == 15:
      raise KeyboardInterrupt("killed")
    return rows(self, step, part)

  monkeypatch.setattr(pipeline.StepBatches, "rows", dies_at_step_15)
  with pytest.raises(KeyboardInterrupt):
    run_lib.execute_pack(group, killed)
  monkeypatch.undo()
  resumed = []
  for run in group:
    assert results.read_result(killed / "runs" / run.id) is None
    saved = [int(p.name) for p in (killed / "runs" / run.id / "ckpt").iterdir() if p.name.isdigit()]
    assert saved and max(saved) <= 15
    resumed.append(f"resuming {run.id} from step {max(saved)}")
  capsys.readouterr()
  run_lib.execute_pack(group, killed)
  assert [line for line in capsys.readouterr().out.splitlines() if "resuming" in line] == resumed
  for run in group:
    assert_events_match_metrics(killed / "runs" / run.id)
    a, b = (results.read_result(w / "runs" / run.id) for w in (packed, killed))
    assert a["metrics"] == b["metrics"], run.id
    assert {k: v for k, v in a["train"].items() if "seconds" not in k} == {
      k: v for k, v in b["train"].items() if "seconds" not in k
    }
    assert _lines(packed, run) == _lines(killed, run)


@pytest.mark.slow
def test_lanes_in_turn_vmapped_and_over_devices_take_the_same_step():
  """The CPU's step (lanes one after another, stopped ones skipped) equals the accelerators'
  (vmapped, stopped ones masked), and either with the lanes split over two devices equals it
  unsplit: each active lane takes its own step, a stopped one keeps its state."""
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from scaling import mesh as mesh_lib
  from scaling import model as model_lib
  from scaling import pack, train

  cfg = train.TrainConfig(batch_size=4, seq_len=8, warmup_steps=0)
  mesh = mesh_lib.make_mesh({"data": 2}, jax.devices()[:2])
  with mesh_lib.activate(mesh):
    graphdef, params = mesh_lib.create_sharded(
      lambda: model_lib.Transformer(model_lib.ladder_config("d16l2", 64), nnx.Rngs(0)), mesh, mesh_lib.DEFAULT_RULES
    )
  axes, width = pack.lane_layout(mesh, mesh_lib.DEFAULT_RULES, jax.tree.map(lambda x: x.sharding, params), 4)
  assert (axes, width) == (("data",), 4)
  assert pack.lane_layout(mesh, mesh_lib.DEFAULT_RULES, {}, 3) == (("data",), 4)  # One padding lane.
  assert pack.lane_layout(mesh_lib.make_mesh({"data": 1}, jax.devices()[:1]), mesh_lib.DEFAULT_RULES, {}, 3) == ((), 3)
  fsdp = mesh_lib.make_mesh({"data": 2, "fsdp": 2}, jax.devices()[:4])  # Weights split over fsdp: lanes over data.
  assert pack.lane_layout(fsdp, mesh_lib.DEFAULT_RULES, [jax.NamedSharding(fsdp, jax.P("fsdp"))], 3) == (("data",), 4)
  tx = train.make_optimizer(cfg)
  lanes = pack.stack([params] * 4)
  state = lambda: {
    "step": jnp.zeros(4, jnp.int32),
    "params": jax.tree.map(jnp.copy, lanes),
    "opt": jax.vmap(tx.init)(lanes),
    "tokens": jnp.zeros(4),
  }
  tokens = jax.random.randint(jax.random.key(1), (4, 4, 9), 0, 64)
  batch = {"inputs": tokens[..., :-1], "targets": tokens[..., 1:], "weights": jnp.ones((4, 4, 8))}
  lr, active = jnp.asarray([1e-3, 1e-2, 1e-2, 3e-3]), jnp.asarray([True, True, False, True])
  with mesh_lib.activate(mesh):
    steps = {
      (b, split): pack.step_fn(graphdef, cfg, backend=b, mesh=mesh, axes=axes if split else ())(
        state(), {}, batch, lr, active
      )
      for b in ("cpu", "gpu")
      for split in (False, True)
    }
  turn, turn_m = steps["cpu", False]
  np.testing.assert_array_equal(turn["step"], [1, 1, 0, 1])
  for (backend, split), (other, other_m) in steps.items():
    np.testing.assert_allclose(turn_m["loss"][active], other_m["loss"][active], rtol=1e-6)
    # Another program sums in another order: each optimiser array within 1e-6 of its largest
    # entry; the parameters within a hundredth of a step, since Adam's first step (about lr times
    # the gradient's sign) magnifies that noise where a gradient is near 0.
    jax.tree.map(
      lambda a, b: np.testing.assert_allclose(b, a, atol=1e-6 * float(np.abs(a).max())), turn["opt"], other["opt"]
    )
    jax.tree.map(
      lambda a, b: np.testing.assert_allclose(b, a, atol=1e-2 * float(lr.min())), turn["params"], other["params"]
    )
    np.testing.assert_array_equal(other["step"], turn["step"])
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a[2], b[2]), other["params"], lanes)  # Stopped.
    if split:  # Each device holds two whole lanes.
      assert jax.tree.leaves(other["params"])[0].sharding.spec[0] == "data", backend
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.abs(a[:2] - b[:2]).max()), turn["params"], lanes))
  assert max(moved) > 0
