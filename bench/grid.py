"""The packing benchmark (`python -m bench grid`): the fine-tunes of a finished study (bases, data
and plan reused; every run trained again in a scratch folder), one by one and then packed as lanes
of one program (`scaling.pack`), each after an untimed pass that compiles its programs: runs per
hour of both, the speed-up, and the largest relative difference of any metric between a run
trained alone and packed."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time

from etils import epath

from scaling import grid, results, timing
from scaling import run as run_lib
from scaling.kinds import finetune


def measure(workdir: str, lanes: int, sizes: tuple[str, ...] = ()) -> list[tuple[str, str]]:
  """Rows of the packing benchmark: a finished study's fine-tunes, one by one and packed."""
  root = epath.Path(workdir)
  specs = sorted((root / "runs").glob("*/spec.json")) if (root / "runs").exists() else []
  runs = [grid.Run.from_json(json.loads(p.read_text())) for p in specs]
  bases = {r.id: r for r in runs if r.kind in grid.BASE_KINDS and results.read_result(root / "runs" / r.id)}
  tunes = [
    r for r in runs if r.kind == "finetune" and r.config["base"] in bases and (not sizes or r.config["size"] in sizes)
  ]
  if not tunes:
    raise SystemExit(f"no fine-tunes with finished bases in {workdir}: run the study first (make study)")
  # Runs of a pack are consecutive in a study's plan: here, fine-tunes of one pack key in a row.
  tunes.sort(key=lambda r: (finetune.pack_key(r), r.config["d_f"], r.config["seed"]))

  def execute_all(mode_lanes: int) -> tuple[float, list[dict], str]:
    """Seconds, records and where the time went of every fine-tune, in a scratch copy of the
    workdir's bases and data."""
    with tempfile.TemporaryDirectory() as scratch:
      scratch = epath.Path(scratch)
      for base in {r.config["base"] for r in tunes}:
        shutil.copytree(root / "runs" / base, scratch / "runs" / base)
      os.symlink(os.path.abspath(root / "data"), scratch / "data")  # Prepared datasets: read only.
      mine = [dataclasses.replace(r, execution={**r.execution, "pack": mode_lanes}) for r in tunes]
      for r in mine:
        (scratch / "runs" / r.id).mkdir(parents=True)
      before, t0 = timing.totals(), time.perf_counter()
      records = [rec for group in run_lib.packs(mine) for rec in run_lib.execute_pack(group, scratch)]
      seconds = time.perf_counter() - t0
      phases = {k: v - before.get(k, 0.0) for k, v in timing.totals().items()}
      return seconds, records, timing.summary(seconds, phases).removeprefix("time: ")

  timed = {}
  for mode in (1, lanes):
    execute_all(mode)  # Compiles every program of the mode (and fills the persistent cache).
    timed[mode] = execute_all(mode)
  (alone_s, alone, alone_phases), (packed_s, packed, packed_phases) = timed[1], timed[lanes]
  worst = max(
    abs(b["metrics"][k] - v) / max(abs(v), 1e-12) for a, b in zip(alone, packed) for k, v in a["metrics"].items()
  )
  per_hour = lambda seconds: len(tunes) * 3600 / seconds
  return [
    ("fine-tunes", f"{len(tunes)} ({', '.join(sorted({r.config['size'] for r in tunes}))}) of {workdir}"),
    ("one by one", f"{alone_s:.1f} s, {per_hour(alone_s):,.0f} runs/hour"),
    ("  where its time goes", alone_phases),
    (f"packed (up to {lanes} lanes)", f"{packed_s:.1f} s, {per_hour(packed_s):,.0f} runs/hour"),
    ("  where its time goes", packed_phases),
    ("speed-up", f"{alone_s / packed_s:.2f}x"),
    ("largest relative metric difference", f"{worst:.2e}"),
  ]
