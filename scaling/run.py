"""Executes one run of a study: the command that every host of a slice runs.

    python -m scaling.run --spec <workdir>/runs/<run_id>/spec.json

What a run does depends on its kind, a plug-in in scaling.kinds (pretrain, finetune, eft). Every
run ends by writing result.json, atomically; its presence means the run is done.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
from absl import logging
from etils import epath

from scaling import context as context_lib
from scaling import grid, kinds, results
from scaling import mesh as mesh_lib


def execute(run: grid.Run, workdir: str | epath.Path) -> dict:
  """Runs (or resumes) one run and writes its result; returns the result record."""
  done = results.read_result(epath.Path(workdir) / "runs" / run.id)
  if done is not None:
    return done
  t0 = time.time()
  ctx = context_lib.context(run, workdir)
  with mesh_lib.activate(ctx.mesh, ctx.rules):
    fields = kinds.get(run.kind).execute(ctx)
  record = {"id": run.id, "kind": run.kind, **fields, "seconds": time.time() - t0, "spec": run.config}
  if jax.process_index() == 0:
    results.write_json(ctx.run_dir / results.RESULT, record)
  return record


def setup_runtime(cache_dir: str | None = None) -> None:
  """Quiet logs and a persistent XLA compilation cache, so runs of one shape compile once."""
  logging.set_verbosity(logging.ERROR)  # Orbax logs every save; TFDS warns of custom configs.
  cache_dir = cache_dir or os.environ.get("SCALING_JAX_CACHE", os.path.expanduser("~/.cache/scaling/jax"))
  jax.config.update("jax_compilation_cache_dir", cache_dir)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def load_spec(path: str | epath.Path) -> tuple[grid.Run, epath.Path]:
  """The run in a spec.json and its study's workdir (<workdir>/runs/<id>/spec.json)."""
  path = epath.Path(path)
  return grid.Run.from_json(json.loads(path.read_text())), path.parent.parent.parent


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description="Execute (or resume) one run of a study.")
  parser.add_argument("--spec", required=True, help="Path to <workdir>/runs/<run_id>/spec.json.")
  args = parser.parse_args(argv)
  setup_runtime()
  try:
    run, workdir = load_spec(args.spec)
  except (OSError, ValueError, KeyError) as e:
    sys.exit(f"--spec {args.spec}: not a readable run spec ({getattr(e, 'strerror', None) or e})")
  record = execute(run, workdir)
  print(json.dumps(record["metrics"], indent=2, default=float))


if __name__ == "__main__":
  main(sys.argv[1:])
