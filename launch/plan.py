"""What the pod launchers (launch.gke, launch.tpu) share: a study validated for a Cloud TPU slice,
its plan in the workdir, every run's state, the runs that are ready, and the status table.

    python -m launch.gke [status] --config C.py --topology v5p-32 --workdir gs://B/W --image IMAGE [--watch]
    python -m launch.tpu [status] --config C.py --topology v5p-32 --workdir gs://B/W --project P --zone Z ...

Every host of a slice runs the same command (`host_command`). A run is done when its result.json
exists, and a restarted run resumes from its checkpoint: submitting a failed or preempted run
again is how it resumes.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import re
import shlex
import subprocess
import sys
import uuid

import ml_collections
from absl import flags
from etils import epath
from ml_collections import config_flags

from launch import slices
from scaling import grid, kinds, results
from scaling import study as study_lib

STATES = ("done", "running", "queued", "failed", "missing")
METRICS = "metrics.jsonl"  # A run's training log (scaling.train.MetricsLog), read for its progress.


class PlanError(ValueError):
  """A launch that cannot start; the message names the flag or field, the value and what is allowed."""


class LaunchError(RuntimeError):
  """A launch that stopped: an engine command failed, or a run failed more often than --retries allows."""


@dataclasses.dataclass(frozen=True)
class Slice:
  """A Cloud TPU slice: its name, generation, chips (the JAX devices), hosts and torus shape."""

  name: str  # v5p-32: the count is TensorCores for v4 and v5p (2 a chip), chips for v5e and v6e.
  generation: str
  chips: int
  hosts: int
  topology: str  # 2x2x4, as GKE's node label cloud.google.com/gke-tpu-topology writes it.

  @property
  def chips_per_host(self) -> int:
    """The chips (google.com/tpu) that each host has."""
    return self.chips // self.hosts


@dataclasses.dataclass(frozen=True)
class Plan:
  """A study validated for a slice: its runs in dependency order, and the workdir they write to."""

  study: ml_collections.ConfigDict
  slice: Slice
  runs: list[grid.Run]
  workdir: epath.Path


@dataclasses.dataclass(frozen=True)
class RunState:
  """Where a run stands (one of STATES), the name of its engine object where it has one, and its
  folder, from which the status table reads its progress."""

  run: grid.Run
  state: str
  engine: str = ""
  run_dir: epath.Path | None = None  # None: the table shows no progress.


def tpu_slice(name: str) -> Slice:
  """The slice of a name like v5p-32; raises slices.CheckError naming an unknown one."""
  topology, _ = slices.tpu_topology(name)
  generation, count = name.split("-")
  chips = int(count) // slices.TPUS[generation][1]
  # A host has 4 chips, except single-host v5e and v6e machines, which have up to 8.
  largest_single_host = 4 if generation in ("v4", "v5p") else 8
  hosts = 1 if chips <= largest_single_host else chips // 4
  return Slice(name, generation, chips, hosts, topology.split(":")[1])


def define_flags() -> None:
  """The flags of every pod launcher; defined when a launcher runs, not on import (tests import two)."""
  config_flags.DEFINE_config_file("config", None, "Study config file (get_config()).", lock_config=False)
  flags.DEFINE_string("workdir", None, "Where specs and results go: gs://BUCKET/PATH, which every host reaches.")
  flags.DEFINE_string("topology", None, "The Cloud TPU slice of every run: v4-8, v5p-32, v5e-16, v6e-8 ...")
  flags.DEFINE_bool("dry_run", False, "Print every command and manifest; run nothing and write nothing.")
  flags.DEFINE_alias("dry-run", "dry_run")
  flags.DEFINE_bool("watch", False, "Keep going until every run is done, or one failed more than --retries times.")
  flags.DEFINE_float("poll_seconds", 30.0, "Seconds between looks at the engine.", lower_bound=0.0)
  flags.DEFINE_integer(
    "retries",
    3,
    "How often this launcher submits a failed run again before it gives up (preemptions are not failures).",
    lower_bound=0,
  )


def is_status(argv: list[str], usage: str) -> bool:
  """Whether the command line asks for the status table (`status`) rather than a launch."""
  if argv[1:] not in ([], ["status"]):
    sys.exit(f"usage error: unknown command {' '.join(argv[1:])!r}; allowed: status\nusage: {usage}")
  return argv[1:] == ["status"]


def from_flags(usage: str, probe: bool) -> Plan:
  """The plan of --config, --topology and --workdir; exits with one line if one of them is wrong. A
  dry run (--dry_run) does not look at the workdir: it reaches nothing, gs:// included."""
  f = flags.FLAGS
  if f.config is None or not f.topology or not f.workdir:
    sys.exit(f"usage: {usage}")
  try:
    return load(f.config, f.topology, f.workdir, probe, look=not f.dry_run)
  except study_lib.StudyError as e:
    sys.exit(f"invalid study: {e}")
  except (slices.CheckError, PlanError) as e:
    sys.exit(f"invalid launch: {e}")


def load(config: ml_collections.ConfigDict, topology: str, workdir: str, probe: bool, look: bool = True) -> Plan:
  """The study validated for the slice and, with `look`, its workdir reachable (`probe`: writable too)."""
  tpu = tpu_slice(topology)
  study = study_lib.validate(config, tpu.chips)
  slices.require_full_mesh(study, tpu.chips, tpu.name)
  runs = kinds.expand(study)
  require_host_batches(study, runs, tpu)
  path = results.workdir_path(workdir)
  if look:
    require_reachable(path, workdir, probe)
  return Plan(study, tpu, runs, path)


def require_host_batches(study: ml_collections.ConfigDict, runs: list[grid.Run], tpu: Slice) -> None:
  """Raises PlanError unless every batch splits evenly over the slice's hosts."""
  batches = {f"{r.kind}.train.batch_size": r.config["train"]["batch_size"] for r in runs if "train" in r.config}
  batches["eval.batch_size"] = study.eval.batch_size
  for field, size in batches.items():
    if size % tpu.hosts:  # Each host loads its own rows of every batch.
      raise PlanError(
        f"{field}={size} does not divide across the {tpu.hosts} hosts of {tpu.name}; allowed: a multiple of {tpu.hosts}"
      )


def require_reachable(workdir: epath.Path, flag: str, probe: bool) -> None:
  """Raises PlanError unless the workdir is readable and, with `probe`, takes a file (then deleted)."""
  probe_file = workdir / f".probe-{uuid.uuid4().hex}"
  try:
    workdir.exists()
    if probe:
      workdir.mkdir(parents=True, exist_ok=True)
      probe_file.write_text("probe")
      probe_file.unlink()
  except Exception as e:  # Local paths raise OSError; gs:// paths raise their file system's errors.
    raise PlanError(
      f"--workdir={flag!r} is not reachable: cannot {'write a file there' if probe else 'read it'} "
      f"({getattr(e, 'strerror', None) or e}); allowed: a directory that this machine and "
      "every host of the slice can write, such as gs://BUCKET/PATH"
    ) from None


def write_plan(study, runs: list[grid.Run], workdir: epath.Path) -> None:
  """Writes study.json and every run's spec.json (atomically; unchanged specs are rewritten equal)."""
  results.write_json(workdir / "study.json", study.to_dict())
  for r in runs:
    results.write_json(workdir / "runs" / r.id / "spec.json", r.to_json())


def summary(p: Plan, dry_run: bool = False) -> str:
  """One line on what a launch is about."""
  unread = " (a dry run does not read it: every run shows as not done)" if dry_run else ""
  return (
    f"study {p.study.name!r}: {len(p.runs)} runs, each on a {p.slice.name} slice ({p.slice.chips} chips, "
    f"{p.slice.hosts} hosts); workdir {p.workdir}{unread}"
  )


def host_command(workdir: epath.Path, run: grid.Run, python: str = "python3") -> list[str]:
  """The command that every host of the run's slice executes, with the host's `python`."""
  return [python, "-m", "scaling.run", "--spec", f"{workdir}/runs/{run.id}/spec.json", "--distributed"]


def study_key(p: Plan, limit: int = 63) -> str:
  """The study's name as a DNS label of at most `limit` characters, with a hash of its name and
  workdir: the prefix of its slices and JobSets, so that two studies named alike never meet."""
  digest = hashlib.sha256(f"{p.study.name}\n{p.workdir}".encode()).hexdigest()[:6]
  return f"{dns_label(p.study.name, limit - len(digest) - 1)}-{digest}"


def dns_label(text: str, limit: int = 63) -> str:
  """`text` as a DNS label of at most `limit` characters: a-z, 0-9 and '-', a letter first."""
  label = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
  if not label[:1].isalpha():
    label = f"x-{label}"
  return label[:limit].rstrip("-")


def call(argv: list[str], dry_run: bool, stdin: str | None = None) -> str:
  """Runs a command (no shell) and returns its output; with dry_run, prints it and its input instead."""
  if dry_run:
    print(shlex.join(argv))
    if stdin is not None:
      print(stdin)
    return ""
  given = {"input": stdin} if stdin is not None else {"stdin": subprocess.DEVNULL}
  try:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, **given)
  except FileNotFoundError:
    raise LaunchError(f"{argv[0]}: not found on PATH; install it and log in first") from None
  if proc.returncode:
    detail = (proc.stderr.strip().splitlines() or ["no message"])[-1]
    raise LaunchError(f"{shlex.join(argv)} failed (exit {proc.returncode}): {detail}")
  return proc.stdout


def run_states(runs: list[grid.Run], workdir: epath.Path | None, engine: dict[str, tuple[str, str]]) -> list[RunState]:
  """Each run's state: done if result.json exists, else `engine`'s (state, object name), else missing.
  With no workdir (a dry run), none is read and no run is done."""
  # Callers ask the engine first: a run that finished in between then reads as done, not as failed.
  states = []
  for r in runs:
    run_dir = workdir / "runs" / r.id if workdir is not None else None
    done = run_dir is not None and results.read_result(run_dir) is not None
    state, name = ("done", "") if done else engine.get(r.id, ("missing", ""))
    states.append(RunState(r, state, name, run_dir))
  return states


def ready(states: list[RunState]) -> list[RunState]:
  """Runs to submit now, in dependency order: missing or failed, with every dependency done."""
  done = {s.run.id for s in states if s.state == "done"}
  return [s for s in states if s.state in ("missing", "failed") and set(s.run.deps) <= done]


def counts(states: list[RunState]) -> str:
  """How many runs are in each state, on one line."""
  n = collections.Counter(s.state for s in states)
  return f"{len(states)} runs: " + ", ".join(f"{n[state]} {state}" for state in STATES)


def progress(s: RunState) -> str:
  """How far a run that is not done got, from its metrics.jsonl: 'step 120/400, dev loss 1.234', or
  as much of it as the log has ('' for none)."""
  path = s.run_dir / METRICS if s.run_dir is not None and s.state != "done" else None
  if path is None or not path.exists():
    return ""
  step = dev_loss = None
  for line in path.read_text().splitlines():
    try:
      record = json.loads(line)
    except ValueError:  # The last line of a run that is writing it, or that was killed while it did.
      continue
    step, dev_loss = record.get("step", step), record.get("dev_loss", dev_loss)
  total = s.run.config.get("train", {}).get("max_steps")  # Only the kinds that train have a step count.
  shown = [] if step is None else [f"step {step}/{total}" if total else f"step {step}"]
  shown += [] if dev_loss is None else [f"dev loss {dev_loss:.4g}"]
  return ", ".join(shown)


def format_status(states: list[RunState]) -> str:
  """The status table: a row per run (id, kind, state, engine object, progress), then the counts."""
  shown = [progress(s) for s in states]  # Read here, not in run_states: the launchers poll those.
  width = max(len(s.run.id) for s in states)
  engine_width = max(len(e) for e in ["engine", *(s.engine for s in states)])
  rows = [("run", "kind", "state", "engine", "progress" if any(shown) else "")]
  rows += [(s.run.id, s.run.kind, s.state, s.engine, p) for s, p in zip(states, shown, strict=True)]
  # Progress comes last, so that a row without it reads as it did before progress was shown.
  lines = [f"{i:<{width}}  {k:<8}  {st:<7}  {e:<{engine_width}}  {p}".rstrip() for i, k, st, e, p in rows]
  return "\n".join([*lines, counts(states)])


class Retries:
  """Counts how often this launcher submitted each failed run again, and stops at --retries."""

  def __init__(self, limit: int):
    self.limit = limit
    self.used: collections.Counter[str] = collections.Counter()

  def spend(self, run_id: str, engine: str) -> None:
    """Counts one more submission of a failed run; raises LaunchError when none is left."""
    if self.used[run_id] >= self.limit:
      raise LaunchError(
        f"run {run_id} failed {self.used[run_id] + 1} times (last on {engine}); gave up (--retries={self.limit})"
      )
    self.used[run_id] += 1
