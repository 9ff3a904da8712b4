"""The training-step benchmark: the reference computes our model's loss and gradients; both steps
run from the command line with finite numbers and the same losses; `train` imports nothing that
the GPU machines lack; the peak table."""

import json
import math
import os
import subprocess
import sys
import tarfile
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from bench import grid as grid_bench
from bench import methods as methods_bench
from bench import reference
from bench import train as train_bench
from scaling import kinds
from scaling import model as model_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The study's data stack, absent where `bench train` runs on GPUs.
ABSENT_ON_GPU = ("ml_collections", "tensorflow_datasets", "grain", "array_record")


@pytest.mark.parametrize(
  "block, rtol",
  [
    ({}, 1e-6),  # Measured: 1e-7 on the gradients.
    # Measured: equal, loss and gradients (the same bfloat16 ops in the same order), so held as
    # tightly as float32: far inside a bfloat16 ulp (4e-3).
    ({"compute_dtype": "bfloat16", "remat": "dots"}, 1e-6),
    ({"layer_loop": "scan", "remat": "full"}, 1e-6),  # The reference holds the blocks stacked.
  ],
)
def test_reference_gives_our_loss_and_gradients(block, rtol):
  cfg = model_lib.ladder_config("d32l2", vocab_size=64, **block)
  graphdef, params = nnx.split(model_lib.Transformer(cfg, nnx.Rngs(0)))
  params = nnx.to_pure_dict(params)
  tokens = jax.random.randint(jax.random.key(1), (4, 17), 0, 64)
  batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "weights": jnp.ones((4, 16))}

  def ours(p):
    logits = nnx.merge(graphdef, p)(batch["inputs"])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]).mean()

  loss, grads = jax.jit(jax.value_and_grad(ours))(params)
  ref_loss, ref_grads = jax.jit(jax.value_and_grad(lambda p: reference.loss(cfg, p, batch)))(
    reference.from_ours(cfg, params)
  )
  assert float(ref_loss) == pytest.approx(float(loss), rel=rtol)
  for g, want in zip(jax.tree.leaves(ref_grads), jax.tree.leaves(reference.from_ours(cfg, grads))):
    np.testing.assert_allclose(g, want, rtol=0, atol=rtol * np.abs(want).max())


@pytest.mark.slow
def test_train_bench_runs_both_steps_from_the_command_line(tmp_path):
  rows_json = tmp_path / "rows.json"
  script = (
    "import runpy, sys; runpy.run_module('bench', run_name='__main__', alter_sys=True); "
    f"print('imported:', sorted({{m.split('.')[0] for m in sys.modules}} & set({ABSENT_ON_GPU!r})))"
  )
  proc = subprocess.run(
    [
      sys.executable,
      "-c",
      script,
      "train",
      "--size",
      "d32l2",
      "--seq",
      "16",
      "--batch",
      "4",
      "--steps",
      "3",
      "--vocab",
      "512",
      "--json",
      str(rows_json),
      "--hlo",
      str(tmp_path),
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    env={**os.environ, "PYTHONPATH": ROOT},
    check=True,
  )
  assert "imported: []" in proc.stdout
  for impl in ("ours", "reference"):
    assert (tmp_path / f"d32l2-{impl}.hlo.txt").read_text().startswith("HloModule")
  table = proc.stdout.splitlines()
  assert "vocab 512" in table[0] and [line.split()[1] for line in table[2:4]] == ["ours", "reference"]
  ours, ref = json.loads(rows_json.read_text())
  for row in (ours, ref):
    assert all(
      math.isfinite(row[k]) and row[k] > 0
      for k in ("step_s", "tokens_per_s", "flops_per_s", "program_bytes", "over_reference")
    )
    assert row["mfu"] is None and len(row["losses"]) == 5  # No MFU on a CPU; 2 warm-up and 3 timed steps.
  # Same parameters, batch and optimiser: the same loss at every step (measured: within 1e-7).
  np.testing.assert_allclose(ours["losses"], ref["losses"], rtol=1e-5)
  assert ours["losses"][-1] < ours["losses"][0]


def test_peak_flops_by_device_kind():
  peak = lambda kind, dtype: train_bench.peak_flops(types.SimpleNamespace(device_kind=kind), dtype)
  assert peak("NVIDIA H100 80GB HBM3", "bfloat16") == 989e12
  assert peak("NVIDIA H100 80GB HBM3", "float32") == 494.5e12  # TF32, JAX's default for float32 matmuls.
  assert peak("NVIDIA H100 PCIe", "bfloat16") == 756e12
  assert peak("NVIDIA H200", "bfloat16") == 989e12
  assert peak("TPU v5 lite", "bfloat16") == 197e12 and peak("TPU v5", "bfloat16") == 459e12
  assert peak("cpu", "float32") is None


@pytest.mark.slow
def test_methods_bench_compares_each_method_with_full_tuning():
  from scaling import methods

  cfg = model_lib.ladder_config("d32l2", vocab_size=64)
  rows = methods_bench.measure(cfg, ["full", "lora", "reft"], seq=16, batch=8, steps=2, warmup=1)  # 8 devices.
  assert [r[0] for r in rows] == ["full", "lora", "reft"]
  for name, p, *_, step_ratio, memory_ratio in rows:
    method = methods.get_method(name)
    model = method.prepare(model_lib.Transformer(cfg, nnx.Rngs(0)), nnx.Rngs(1))
    assert int(p.replace(",", "")) == methods.trainable_count(method, model)
    assert float(step_ratio[:-1]) > 0 and float(memory_ratio[:-1]) > 0
  assert rows[0][-2:] == ("1.00x", "1.00x")
  assert all(float(r[-1][:-1]) < 1 for r in rows[1:])  # Fewer moments: every PET step needs less memory.


@pytest.mark.slow
def test_grid_bench_trains_a_studys_fine_tunes_alone_and_packed_to_the_same_metrics(tmp_path):
  from conftest import tiny_study

  from launch import local
  from scaling import run as run_lib
  from scaling import study as study_lib

  study = study_lib.validate(tiny_study(**{"finetune.d_f": (8, 16, 32), "finetune.train.max_steps": 10}), 8)
  runs = kinds.expand(study)
  local.write_plan(study, runs, tmp_path)
  run_lib.execute(runs[0], tmp_path)  # The base; its fine-tunes are the bench's.
  rows = dict(grid_bench.measure(str(tmp_path), lanes=3))
  assert rows["fine-tunes"].startswith("3 (d32l2)")
  assert "runs/hour" in rows["one by one"] and "runs/hour" in rows["packed (up to 3 lanes)"]
  assert float(rows["largest relative metric difference"]) < 1e-4
  assert not list((tmp_path / "runs").glob("ft-*/result.json"))  # It trained in scratch folders.


RECORDER = """#!{python}
import json, os, sys
with open({log!r}, "a") as f:
  f.write(json.dumps({{"tool": os.path.basename(sys.argv[0]), "argv": sys.argv[1:],
                      "xla_flags": os.environ.get("XLA_FLAGS")}}) + "\\n")
dumps = [flag.split("=", 1)[1] for flag in os.environ.get("XLA_FLAGS", "").split() if flag.startswith("--xla_dump_to=")]
if dumps:  # As XLA would: the last flag wins; a small HLO file and a large LLVM one.
  os.makedirs(dumps[-1], exist_ok=True)
  with open(os.path.join(dumps[-1], "module.after_optimizations.txt"), "w") as f:
    f.write("HloModule m")
  with open(os.path.join(dumps[-1], "module.ll"), "w") as f:
    f.write("x" * 3_000_000)
"""


@pytest.mark.parametrize("xla_flags", [None, "--xla_dump_to=/tmp/x"])
def test_gpu_script_runs_every_setting_with_its_xla_flags(tmp_path, xla_flags):
  """bench/gpu.sh against recording stand-ins for python3 and nvidia-smi: each setting runs the
  train bench once, with its flags added to the caller's XLA_FLAGS and never a blank XLA_FLAGS
  (which XLA reads as a file name and aborts)."""
  log = tmp_path / "calls.jsonl"
  for tool in ("python3", "nvidia-smi"):
    (tmp_path / tool).write_text(RECORDER.format(python=sys.executable, log=str(log)))
    (tmp_path / tool).chmod(0o755)
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update({"PATH": f"{tmp_path}:{env['PATH']}", "OUT": str(tmp_path / "out")})
  if xla_flags:
    env["XLA_FLAGS"] = xla_flags
  done = subprocess.run(["bash", os.path.join(ROOT, "bench", "gpu.sh")], env=env, capture_output=True, text=True)
  assert done.returncode == 0 and "== done" in done.stdout, done.stdout + done.stderr
  assert sorted(os.listdir(tmp_path / "out")) == ["gpu.tgz", "gpu.txt"]  # The device tool returns 8 files at most.
  calls = [json.loads(line) for line in log.read_text().splitlines()]
  rows = [c for c in calls if c["tool"] == "python3" and c["argv"][:3] == ["-m", "bench", "train"]]
  smoke, settings = rows[0], rows[1:]
  assert "--seq" in smoke["argv"] and smoke["xla_flags"] == xla_flags
  assert len(settings) == 7 and all(r["argv"][3:7] == ["--seq", "2048", "--vocab", "32768"] for r in settings)
  notriton = [r for r in settings if r["xla_flags"] and "--xla_gpu_enable_triton_gemm=false" in r["xla_flags"]]
  dumped = [r for r in settings if r["xla_flags"] and "--xla_dump_to=" in r["xla_flags"].replace(xla_flags or "", "")]
  assert len(notriton) == 1 and dumped == settings[:1]  # The first (1.3B) row keeps its compile's dump.
  for r in settings:
    assert r["xla_flags"] is None or r["xla_flags"].strip() == r["xla_flags"] != ""
    if xla_flags:
      assert xla_flags in r["xla_flags"]
    elif r not in notriton + dumped:
      assert r["xla_flags"] is None
  assert sum("--loss-chunk" in r["argv"] for r in settings) == 1
  with tarfile.open(tmp_path / "out" / "gpu.tgz") as tar:
    names = tar.getnames()
    name = settings[0]["argv"][settings[0]["argv"].index("--json") + 1].split("/")[-1].removesuffix(".json")
    times = tar.extractfile(f"./{name}-dump-times.txt").read().decode().splitlines()
  # Every dumped file is listed with its time and size; only the small ones travel back.
  assert sorted((line.split()[3], int(line.split()[2])) for line in times) == [
    ("module.after_optimizations.txt", 11),
    ("module.ll", 3_000_000),
  ]
  assert all(line.split()[1] == "s" and 0 <= float(line.split()[0]) < 60 for line in times)
  assert f"./{name}-dump/module.after_optimizations.txt" in names and f"./{name}-dump/module.ll" not in names
