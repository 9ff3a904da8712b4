"""Test set-up: 8 fake CPU devices for sharding tests, tiny models and a tiny world."""

import atexit
import dataclasses
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid

# Tests check what the code computes, not how fast XLA's output runs: its cheapest CPU compiles
# (about a third less test time from a cold cache), and its older code generator, which compiles a
# tiny train step in 0.5 s where the fusion emitters take 1.3 s (the suite from a cold cache: 401 s
# against 514 s). Run processes inherit the flags.
os.environ["XLA_FLAGS"] = " ".join(
  [
    os.environ.get("XLA_FLAGS", ""),
    "--xla_llvm_disable_expensive_passes=true",
    "--xla_backend_optimization_level=0",
    "--xla_cpu_use_fusion_emitters=false",
  ]
).strip()

import jax  # noqa: E402

# Must run before any JAX backend starts: sharding tests need 8 devices on one CPU.
jax.config.update("jax_num_cpu_devices", 8)
os.environ.setdefault("SCALING_JAX_CACHE", os.path.join(os.path.dirname(__file__), "..", ".jax_cache"))
# Checkpoint hashes in a folder of the session's, not the user's ~/.cache.
os.environ["SCALING_HASH_CACHE"] = tempfile.mkdtemp(prefix="scaling_hash_cache_")
atexit.register(shutil.rmtree, os.environ["SCALING_HASH_CACHE"], ignore_errors=True)

import pytest  # noqa: E402
from flax import nnx  # noqa: E402

from scaling import run as run_lib  # noqa: E402
from scaling.data import world as world_lib  # noqa: E402

run_lib.setup_runtime()  # The persistent compilation cache, shared by the test workers.

TINY_WORLD = world_lib.WorldConfig(seed=0, num_people=40, bio_renderings=2, heldout_renderings=1)


def pytest_collection_modifyitems(items):
  """Files with slow tests first: two workers then end together instead of waiting on a late one."""
  slow = {item.path for item in items if item.get_closest_marker("slow")}
  items.sort(key=lambda item: item.path not in slow)  # Stable: a file's tests stay together, in order.


# Tests against `transformers` (PyTorch on the CPU) import it and torch where they use them, not at
# collection: every test worker collects every file, and the two take 6 s to import (14 s cold).
needs_transformers = pytest.mark.skipif(
  not all(importlib.util.find_spec(m) for m in ("torch", "transformers")),
  reason="the test extra's torch and transformers are not installed",
)


@pytest.fixture(scope="session")
def world_data_dir(tmp_path_factory):
  """The tiny world's TFDS dataset, built once per test session."""
  from scaling.data import tfds_world

  data_dir = tmp_path_factory.mktemp("tfds")
  tfds_world.prepare(TINY_WORLD, str(data_dir))
  return str(data_dir)


@dataclasses.dataclass(frozen=True)
class Storage:
  """A Cloud Storage server on loopback: its bucket, and the environment that points clients at it."""

  bucket: str  # gs://NAME
  env: dict[str, str]

  def workdir(self) -> str:
    """A new, empty gs:// folder."""
    return f"{self.bucket}/{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def storage(tmp_path_factory):
  """tests/storage_server.py on a free loopback port; this process's gs:// clients (and, through
  `env`, its subprocesses') use it, and a gs:// workdir's datasets go to a temporary folder."""
  import fsspec
  import storage_server

  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  log = tmp_path_factory.mktemp("storage_server") / "stderr.log"  # A killed client's broken pipes, among others.
  server = subprocess.Popen(
    [sys.executable, storage_server.__file__, str(port), "scaling-tests"],
    stdout=subprocess.PIPE,
    stderr=log.open("w"),
    text=True,
  )
  try:
    assert server.stdout.readline().strip() == "ready", f"the storage server did not start: {log.read_text()}"
    env = {**storage_server.environment(port), "SCALING_DATA_DIR": str(tmp_path_factory.mktemp("gcs_data"))}
    os.environ.update(env)
    fsspec.config.set_conf_env(fsspec.config.conf)  # FSSPEC_GS_TOKEN, read when fsspec was imported.
    yield Storage("gs://scaling-tests", env)
  finally:
    server.kill()
    server.wait()


# Cached decoding (`model.extend`) as one jitted program per shape: an eager call compiles one
# program per op, seconds more from a cold cache.
extend = nnx.jit(lambda model, *args: model.extend(*args))


def tiny_study(**overrides):
  """A study small enough to run end to end in seconds."""
  import ml_collections

  c = {
    "name": "tiny",
    "world": {"num_people": 40, "bio_renderings": 2, "heldout_renderings": 1},
    "model": {"sizes": ("d32l2",)},
    "pretrain": {
      "steps": (20,),
      "train": {"batch_size": 8, "seq_len": 48, "checkpoint_every": 10, "warmup_steps": 2, "log_every": 5},
    },
    "finetune": {
      "d_f": (16, 32),
      "seeds": (0,),
      "train": {
        "batch_size": 8,
        "seq_len": 16,
        "max_steps": 20,
        "eval_every": 5,
        "patience": 2,
        "warmup_steps": 2,
        "checkpoint_every": 10,
        "log_every": 5,
      },
    },
    "eval": {"batch_size": 40},
    "mesh": {"shape": {"data": 1, "fsdp": 1, "tensor": 1}},
  }
  for path, value in overrides.items():
    node = c
    *parents, leaf = path.split(".")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return ml_collections.ConfigDict(c)
