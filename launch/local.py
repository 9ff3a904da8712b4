"""Runs a whole study on this machine, in dependency order, then fits and reports.

    python -m launch.local --config configs/smoke.py --workdir runs/smoke [--config.a.b=value]

Runs whose result.json exists are skipped; a run that was interrupted resumes from its last
checkpoint, and Ctrl-C stops in one line that gives the command to resume. The study is validated
before anything trains.
"""

from __future__ import annotations

import sys
import time

import jax
from absl import app, flags
from etils import epath
from ml_collections import config_flags

from launch import cli
from launch.plan import write_plan
from scaling import grid, kinds, results, timing
from scaling import run as run_lib
from scaling import study as study_lib

USAGE = "python -m launch.local --config CONFIG.py --workdir DIR [--config.a.b=value]"
_CONFIG = config_flags.DEFINE_config_file("config", None, "Study config file (get_config()).", lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where runs, results and the report go (local or gs://).")
_ANALYSE = flags.DEFINE_bool("analyse", True, "Fit the laws and write the report after the runs.")
_BOOTSTRAP = flags.DEFINE_integer(
  "bootstrap", 200, "Bootstrap replicates of each joint law's intervals.", lower_bound=1
)


def execute_all(runs: list[grid.Run], workdir: epath.Path) -> tuple[int, int]:
  """Executes runs in order (in packs where their kind packs them), skipping finished ones;
  returns (executed, skipped)."""
  pending = [r for r in runs if results.read_result(workdir / "runs" / r.id) is None]
  position = {r.id: i + 1 for i, r in enumerate(runs)}
  for group in run_lib.packs(pending):
    missing = [d for r in group for d in r.deps if results.read_result(workdir / "runs" / d) is None]
    if missing:
      raise RuntimeError(f"runs {[r.id for r in group]} depend on unfinished runs {missing}")
    records = run_lib.execute_pack(group, workdir)
    for r, record in zip(group, records):
      shown = {k: round(v, 4) for k, v in record["metrics"].items() if not k.startswith(("base_", "delta_"))}
      packed = f", {len(group)} packed" if len(group) > 1 else ""
      print(f"[{position[r.id]}/{len(runs)}] {r.id} ({record['seconds']:.1f}s{packed}): {shown}", flush=True)
  return len(pending), len(runs) - len(pending)


def main(argv) -> None:
  del argv
  if _CONFIG.value is None or _WORKDIR.value is None:
    sys.exit(f"usage: {USAGE}")
  with cli.resumable("launch.local"):  # Runs resume from their checkpoints: Ctrl-C needs no traceback.
    t0 = time.time()
    run_lib.setup_runtime()
    try:
      study = study_lib.validate(_CONFIG.value, jax.device_count())
    except study_lib.StudyError as e:
      sys.exit(f"invalid study: {e}")
    workdir = results.workdir_path(_WORKDIR.value)
    try:
      if workdir.exists() and not workdir.is_dir():
        sys.exit(f"--workdir {_WORKDIR.value}: a file, not a folder; allowed: a new folder, or a study's workdir")
      workdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
      sys.exit(f"--workdir {_WORKDIR.value}: cannot create it ({e.strerror or e})")
    except ImportError:  # etils.epath reaches gs:// through gcsfs, an extra.
      sys.exit(
        f"--workdir {_WORKDIR.value}: a gs:// workdir needs gcsfs; allowed: a local folder, or gs:// after "
        "pip install -e '.[gcs]'"
      )
    runs = kinds.expand(study)
    write_plan(study, runs, workdir)
    print(f"study {study.name!r}: {len(runs)} runs in {workdir}", flush=True)
    executed, skipped = execute_all(runs, workdir)
    print(f"runs: {executed} executed, {skipped} already done ({time.time() - t0:.1f}s)", flush=True)
    if _ANALYSE.value:
      from analysis import fit as fit_lib  # Imported late: the runs do not need it.

      with timing.phase("fitting and report"):
        fit_lib.fit_and_report(workdir, bootstrap=_BOOTSTRAP.value)
    print(timing.summary(time.time() - t0), flush=True)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.flags_parser(USAGE))
