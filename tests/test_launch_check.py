"""The memory check: TPU slice names, per-device memory of each distinct train step and mixture, bad targets."""

import os
import re
import sys

import jax
import processes
import pytest
from conftest import tiny_study

from launch import check, slices
from scaling import grid, sources, study_fields
from scaling import model as model_lib
from scaling import study as study_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize(
  "name, topology, hbm",
  [
    ("v5p-8", "v5:2x2x1", 95),
    ("v5p-32", "v5:2x2x4", 95),
    ("v5p-64", "v5:2x4x4", 95),
    ("v5p-128", "v5:4x4x4", 95),
    ("v5e-16", "v5e:4x4", 16),
    ("v5e-8", "v5e:2x4", 16),
    ("v4-8", "v4:2x2x1", 32),
    ("v6e-1", "v6e:1x1", 32),
  ],
)
def test_slice_names_become_topologies(name, topology, hbm):
  assert slices.tpu_topology(name) == (topology, hbm)
  assert slices.tpu_topology(topology) == (topology, hbm)  # A topology names itself.


@pytest.mark.parametrize(
  "name, message",
  [
    ("v9-8", r"--topology='v9-8' is not a TPU slice; allowed: v4-N, v5p-N"),
    ("v5e-12", r"--topology='v5e-12': 12 is not a v5e slice size"),
    ("v5p-3", r"--topology='v5p-3': 3 is not a v5p slice size"),
    ("v5e:4x4x4", r"--topology='v5e:4x4x4': a v5e topology has 2 dimensions of at least 1, such as v5e:2x2"),
    ("v5p:0x2x2", r"--topology='v5p:0x2x2': a v5p topology has 3 dimensions"),
  ],
)
def test_bad_slice_names_are_named(name, message):
  with pytest.raises(slices.CheckError, match=message):
    slices.tpu_topology(name)


def _rows(mesh_shape, memory_bytes=None, packs=False, sizes=("d32l2", "d48l2"), **overrides):
  study = study_lib.validate(tiny_study(**{"mesh.shape": mesh_shape, "model.sizes": sizes, **overrides}), 8)
  target = check.Target("8 cpu", tuple(jax.devices()), memory_bytes, packs)
  return check.check(study, target)


@pytest.mark.slow
def test_every_distinct_train_step_is_compiled_and_sharding_shows():
  data = _rows({"data": 8})
  assert [(r["size"], r["method"]) for r in data] == [
    ("d32l2", "pretrain"),
    ("d48l2", "pretrain"),
    ("d32l2", "full"),
    ("d48l2", "full"),
  ]
  assert all(r["peak"] > 0 and r["fits"] is None for r in data)
  assert data[1]["argument"] > data[0]["argument"]  # The larger model holds more per device.
  fsdp = _rows({"data": 1, "fsdp": 8})
  # Replicated over 8 data shards, each device holds the whole state; FSDP splits it 8 ways.
  assert fsdp[1]["argument"] < data[1]["argument"] / 3
  assert all(r["fits"] is False for r in _rows({"data": 8}, memory_bytes=1000))


@pytest.mark.slow
def test_packed_fine_tunes_are_checked_as_their_packs():
  """On this machine launch.local packs a base's fine-tunes (two D_f here): the check compiles the
  packed step as the pack lays it out. Over 8 data devices each device holds one whole lane (the
  state of a run alone); with the weights split over fsdp the lanes are not split, and each device
  holds its part of both lanes' states."""
  for shape, lanes_per_device in (({"data": 8}, 1), ({"fsdp": 8}, 2)):
    alone, packed = _rows(shape, sizes=("d32l2",)), _rows(shape, packs=True, sizes=("d32l2",))
    assert [r["lanes"] for r in alone] == [1, 1] and [r["lanes"] for r in packed] == [1, 2]
    assert packed[0] == alone[0]  # A pretraining run is its own step either way.
    assert packed[1]["argument"] == pytest.approx(lanes_per_device * alone[1]["argument"], rel=0.05)
  assert "lanes" in check.format_rows(packed, check.Target("8 cpu", tuple(jax.devices()), None, True))


def test_steps_are_checked_with_the_studys_loss_chunks():
  whole, chunked = (_rows({"data": 8}, sizes=("d32l2",), **{"memory.loss_chunk": c}) for c in (0, 4))
  assert [r["method"] for r in chunked] == ["pretrain", "full"]
  assert all(c["temp"] < w["temp"] and c["argument"] == w["argument"] for w, c in zip(whole, chunked))


@pytest.mark.slow
def test_the_vocabulary_is_the_studys_tokenizers():
  """Shakespeare's tokenizer has 2,048 tokens, the world's a few hundred: the checked step's
  parameters are those the run builds, and the check trains no tokenizer to know it."""
  world, shakespeare = (
    _rows({"data": 8}, sizes=("d32l2",), **{"data": {"corpus": corpus}, "finetune.tasks": (task,)})[0]
    for corpus, task in (("world", "qa"), ("shakespeare", "shakespeare_play"))
  )
  cfg = lambda vocab: model_lib.ladder_config("d32l2", vocab)
  assert shakespeare["params"] == model_lib.param_count(cfg(2048))
  assert world["params"] < shakespeare["params"]


def test_mixtures_are_checked_with_all_their_models_held(capsys):
  """An EFT run holds N1's base, N2's fine-tune and N2's base at once (two models when N1 = N2), a
  transplant its base and fine-tune: one row per mixture, whatever its D_f, beta or k, each device
  holding its eighth of every model over fsdp. A device that cannot hold them fails the check."""
  sizes = ("d32l2", "d64l2")
  study = study_lib.validate(
    tiny_study(
      **{
        "mesh.shape": {"fsdp": 8},
        "model.sizes": sizes,
        "eft.enabled": True,
        "eft.pairs": (("d64l2", "d32l2"), ("d32l2", "d32l2")),
        "eft.betas": (0.5, 1.0),
        "transplant.enabled": True,
      }
    ),
    8,
  )
  vocab = sources.model_vocab_size(study_fields.world_config(study), "world")
  count = {s: model_lib.param_count(model_lib.ladder_config(s, vocab)) for s in sizes}
  held = {
    ("d64l2+d32l2", "eft"): count["d64l2"] + 2 * count["d32l2"],
    ("d32l2", "eft"): 2 * count["d32l2"],
    ("d32l2", "transplant"): 2 * count["d32l2"],
    ("d64l2", "transplant"): 2 * count["d64l2"],
  }
  device_memory = 4 * 2 * count["d32l2"] // 8  # Room for the smallest mixture's float32 weights, and nothing else.
  tgt = check.Target("8 cpu", tuple(jax.devices()), device_memory)
  rows = check.check(study, tgt)
  mixtures = [r for r in rows if r["method"] in ("eft", "transplant")]
  assert [((r["size"], r["method"]), r["batch"], r["seq_len"], r["params"]) for r in mixtures] == [
    (k, 40, 16, v) for k, v in held.items()
  ]
  logits = 40 // 8 * 16 * vocab * 4  # One model's (B, L, V) float32 logits, split over the batch.
  for r in mixtures:
    terms = 3 if r["method"] == "eft" else 2
    assert r["argument"] >= 4 * r["params"] / 8 and r["output"] >= terms * logits
    assert r["peak"] >= r["argument"] + r["output"] and r["fits"] is False
  with pytest.raises(SystemExit, match="fits: NO"):
    check.report(rows, tgt)
  table = capsys.readouterr().out
  assert re.search(rf"d64l2\+d32l2 +eft +40 x 16 +1 +{held['d64l2+d32l2', 'eft']:,} .* NO", table), table


def test_mixtures_take_imported_fine_tunes_bare():
  """An imported fine-tune names its method by label only: a mixture holds it as a bare model. A
  model's own run (an imported base or fine-tune) is no mixture, though it names its base."""
  run = lambda id_, kind, **config: grid.Run(
    id_, kind, {"size": "d32l2", "block": {}, **config}, (), {"eval_batch_size": 8}
  )
  runs = [
    run("b", "checkpoint"),
    run("f", "finetune_checkpoint", base="b", method="full"),
    run("e", "eft", base="b", finetuned="f", finetune_base="b", task="qa", method="full"),
  ]
  assert list(check.mixture_shapes(runs, 16)) == [
    ("eft", "[]", (("d32l2", "base", 0), ("d32l2", "base", 1), ("d32l2", "base", 0)), 8, 16)
  ]


def test_a_mesh_that_leaves_devices_out_is_named():
  with pytest.raises(slices.CheckError, match=r"mesh.shape=\{'data': 4\} uses 4 of the 8 devices"):
    _rows({"data": 4})


@pytest.mark.slow
def test_cli_prints_the_table_and_answers_bad_topologies_in_one_line():
  env = {**os.environ, "PYTHONPATH": ROOT}
  command = [
    sys.executable,
    "-m",
    "launch.check",
    "--config",
    os.path.join(ROOT, "configs", "smoke.py"),
    "--config.model.sizes=('d96l3',)",
    "--config.eft.pairs=()",
  ]  # One size: two train steps and one EFT mixture to compile.
  ok = processes.run(command, cwd=ROOT, env=env)
  assert ok.returncode == 0, ok.stderr[-2000:]
  assert "per-device memory" in ok.stdout and "d96l3  pretrain      32 x 48" in ok.stdout
  assert "d96l3       eft     100 x 16" in ok.stdout
  bad = processes.run([*command, "--topology", "v9-8"], cwd=ROOT, env=env)
  assert bad.returncode != 0 and "invalid check: --topology='v9-8' is not a TPU slice" in bad.stderr
  assert "Traceback" not in bad.stderr


def test_pod_ladder_is_a_valid_study_for_a_16_chip_slice():
  sys.path.insert(0, os.path.join(ROOT, "configs"))
  import pod_ladder

  study = study_lib.validate(pod_ladder.get_config(), 16)
  assert study.mesh.shape.to_dict() == {"data": 1, "fsdp": 8, "tensor": 2}
  with pytest.raises(slices.CheckError, match="uses 16 of the 32 devices"):
    check.check(study, check.Target("v5p-64", tuple(range(32)), None))
