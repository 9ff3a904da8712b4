"""Executes one run of a study: the command that every host of a slice runs.

    python -m scaling.run --spec <workdir>/runs/<run_id>/spec.json [--distributed]
    python -m scaling.run --spec ... --coordinator 127.0.0.1:PORT --num-processes N --process-id I

With --distributed, the hosts of a Cloud TPU slice or a GKE TPU job find each other through
`jax.distributed.initialize()` (from the TPU metadata or the worker environment GKE sets); the
--coordinator flags do the same by hand, e.g. for several local processes, each with
XLA_FLAGS=--xla_force_host_platform_device_count=K CPU devices. The mesh spans every host's
devices; each host loads only its rows of every batch; only process 0 writes metrics and results.

What a run does depends on its kind, a plug-in in scaling.kinds (its table KINDS names them all). Every
run ends by writing result.json, atomically; its presence means the run is done.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from collections.abc import Sequence

import jax
from absl import logging
from etils import epath

from scaling import context as context_lib
from scaling import grid, kinds, results
from scaling import mesh as mesh_lib


def execute(run: grid.Run, workdir: str | epath.Path) -> dict:
  """Runs (or resumes) one run and writes its result; returns the result record."""
  return execute_pack([run], workdir)[0]


def execute_pack(runs: Sequence[grid.Run], workdir: str | epath.Path) -> list[dict]:
  """Runs (or resumes) runs of one pack (see `packs`) together, writes each result and returns
  the records; a pack of one is a run alone."""
  records = {run.id: results.read_result(epath.Path(workdir) / "runs" / run.id) for run in runs}
  pending = [run for run in runs if records[run.id] is None]
  if pending:
    t0 = time.time()
    ctxs = [context_lib.context(run, workdir) for run in pending]
    kind = kinds.get(pending[0].kind)
    with mesh_lib.activate(ctxs[0].mesh, ctxs[0].rules):
      fields = [kind.execute(ctxs[0])] if len(pending) == 1 else kind.execute_pack(ctxs)
    seconds = (time.time() - t0) / len(pending)  # A pack's runs share its time.
    for run, ctx, f in zip(pending, ctxs, fields):
      records[run.id] = {"id": run.id, "kind": run.kind, **f, "seconds": seconds, "spec": run.config}
      if jax.process_index() == 0:
        results.write_json(ctx.run_dir / results.RESULT, records[run.id])
  return [records[run.id] for run in runs]


def packs(runs: Sequence[grid.Run]) -> list[list[grid.Run]]:
  """The runs in order, in packs: consecutive runs whose kind trains several at once (it has
  `pack_key` and `execute_pack`) and whose keys are equal, at most `execution["pack"]` of them."""
  out: list[tuple[object, list[grid.Run]]] = []
  for run in runs:
    key_of = getattr(kinds.get(run.kind), "pack_key", None)
    key = key_of(run) if key_of and run.execution.get("pack", 1) > 1 else None
    if key is not None and out and out[-1][0] == key and len(out[-1][1]) < run.execution["pack"]:
      out[-1][1].append(run)
    else:
      out.append((key, [run]))
  return [group for _, group in out]


def _one_line(message, category, filename, lineno, line=None) -> str:
  """A warning as one line of the command's output: what it says, not the source line that warned."""
  del filename, lineno, line
  return f"warning: {message} ({category.__name__})\n"


def setup_runtime(cache_dir: str | None = None) -> None:
  """Quiet logs, warnings in one line each, and a persistent XLA compilation cache, so runs of one
  shape compile once."""
  logging.set_verbosity(logging.ERROR)  # Orbax logs every save; TFDS warns of custom configs.
  warnings.formatwarning = _one_line
  cache_dir = cache_dir or os.environ.get("SCALING_JAX_CACHE", os.path.expanduser("~/.cache/scaling/jax"))
  jax.config.update("jax_compilation_cache_dir", cache_dir)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def load_spec(path: str | epath.Path) -> tuple[grid.Run, epath.Path]:
  """The run in a spec.json and its study's workdir (<workdir>/runs/<id>/spec.json)."""
  path = epath.Path(path)
  return grid.Run.from_json(json.loads(path.read_text())), path.parent.parent.parent


def join_hosts(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
  """Starts jax.distributed as the flags ask (nothing without them); usage errors in one line."""
  manual = (args.coordinator, args.num_processes, args.process_id)
  if args.distributed and any(v is not None for v in manual):
    parser.error("--distributed finds the other hosts itself; do not combine it with --coordinator")
  if any(v is not None for v in manual):
    if None in manual:
      parser.error("--coordinator, --num-processes and --process-id go together")
    host, _, port = args.coordinator.rpartition(":")
    if not host or not port.isdigit():
      parser.error(f"--coordinator={args.coordinator!r}; allowed: HOST:PORT of process 0, e.g. 127.0.0.1:29400")
    if args.num_processes < 1 or not 0 <= args.process_id < args.num_processes:
      parser.error(
        f"--process-id={args.process_id} with --num-processes={args.num_processes}; allowed: "
        "0 <= process id < number of processes"
      )
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU devices across processes.
    jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
  elif args.distributed:
    jax.distributed.initialize()


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description="Execute (or resume) one run of a study.")
  parser.add_argument("--spec", required=True, help="Path to <workdir>/runs/<run_id>/spec.json.")
  parser.add_argument(
    "--distributed",
    action="store_true",
    help="Join the other hosts of a TPU slice or GKE job (jax.distributed.initialize()).",
  )
  parser.add_argument("--coordinator", help="HOST:PORT of process 0, to join hosts by hand.")
  parser.add_argument("--num-processes", type=int, help="Number of processes, with --coordinator.")
  parser.add_argument("--process-id", type=int, help="This process's index, with --coordinator.")
  args = parser.parse_args(argv)
  join_hosts(args, parser)
  setup_runtime()
  try:
    run, workdir = load_spec(args.spec)
  except (OSError, ValueError, KeyError) as e:
    sys.exit(f"--spec {args.spec}: not a readable run spec ({getattr(e, 'strerror', None) or e})")
  record = execute(run, workdir)
  print(json.dumps(record["metrics"], indent=2, default=float))


if __name__ == "__main__":
  main(sys.argv[1:])
