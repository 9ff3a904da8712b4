"""Runs a study on Cloud TPU VMs: a pool of --slices queued resources, each running the next ready
run on all of its hosts through `gcloud compute tpus tpu-vm ssh --worker=all`.

    python -m launch.tpu --config C.py --topology v5p-32 --workdir gs://B/W --project P --zone Z \\
        --package 'scaling[tpu] @ git+https://github.com/ORG/scaling@COMMIT' [--slices 4] [--capacity spot] --watch
    python -m launch.tpu status --config C.py --topology v5p-32 --workdir gs://B/W --project P --zone Z

The slices are queued resources named after the study and its workdir: `<study>-<hash>-0`,
`<study>-<hash>-1`, ... (the hash tells apart studies named alike). A slice is created when a ready
run waits for it (a fine-tune is ready once its base is done). When it is ACTIVE, every host gets uv,
a standalone Python 3.11 whatever its image ships (Cloud TPU VM images have 3.10, older than this
project supports) and a venv, ~/scaling-venv, with --package installed; then the slice runs its run
with that venv's python and takes the next ready one; runs on different slices go in parallel. A
preempted slice (SUSPENDING, SUSPENDED, FAILED) is deleted and created again, and its run goes back
to the queue, to resume from its checkpoint. A run that ends without result.json on a healthy slice
goes back too, at most --retries times; after that the launcher ends every run in progress and
deletes the slices. A slice is deleted once no run is left for it.

The launcher drives the runs: with --watch it keeps going until every run is done; without it, it
returns once no command is in progress (slices still being provisioned wait for the next launch).
An interrupted launcher (Ctrl-C) says so in one line and leaves its slices and
<workdir>/tpu_pool.json (which run each slice has, for `status`): the same command resumes, with the
slices that are left. Runs with result.json are skipped.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import subprocess
import sys
import time

from absl import app, flags

from launch import cli, plan
from scaling import grid, results

USAGE = (
  "python -m launch.tpu [status] --config C.py --topology v5p-32 --workdir gs://B/W --project P --zone Z "
  "--package SPEC [--slices N] [--capacity spot] [--watch] [--dry_run]"
)
# Slice generation -> gcloud's accelerator type prefix (a v5e-16 slice is a v5litepod-16).
ACCELERATOR_TYPES = {"v4": "v4", "v5p": "v5p", "v5e": "v5litepod", "v6e": "v6e"}
# Slice generation -> the TPU VM image that Cloud TPU documents for it.
RUNTIMES = {
  "v4": "tpu-ubuntu2204-base",
  "v5p": "v2-alpha-tpuv5",
  "v5e": "v2-alpha-tpuv5-lite",
  "v6e": "v2-alpha-tpuv6e",
}
CAPACITY = {"on-demand": [], "spot": ["--spot"], "reserved": ["--reserved"]}
UV_VERSION = "0.13.9"  # As the Makefile pins it.
PYTHON_VERSION = "3.11"  # The project's CI Python, and the oldest that it supports.
VENV = "scaling-venv"  # In the home directory, where every remote command starts.
VENV_PYTHON = f"{VENV}/bin/python"
LOST = ("SUSPENDING", "SUSPENDED", "FAILED")  # Preempted or failed: such a queued resource never comes back.
POOL = "tpu_pool.json"


@dataclasses.dataclass(frozen=True)
class Cloud:
  """Where the slices are made, and what they get."""

  project: str
  zone: str
  runtime_version: str
  capacity: str  # A key of CAPACITY.
  package: str  # What every host installs into its venv: this project with its '[tpu]' extra.


@dataclasses.dataclass
class Slot:
  """A slice of the pool: its queued resource (and node) name, its run, and the command in progress."""

  name: str
  run: grid.Run | None = None
  proc: subprocess.Popen | None = None
  installed: bool = False


def gcloud(cloud: Cloud, *args: str) -> list[str]:
  """A `gcloud compute tpus` command in the launch's project and zone."""
  return ["gcloud", "compute", "tpus", *args, "--project", cloud.project, "--zone", cloud.zone]


def create_command(p: plan.Plan, cloud: Cloud, name: str) -> list[str]:
  """The command that asks for a slice: a queued resource and its node, both called `name`."""
  accelerator = f"{ACCELERATOR_TYPES[p.slice.generation]}-{p.slice.name.split('-')[1]}"
  return gcloud(
    cloud,
    "queued-resources",
    "create",
    name,
    "--node-id",
    name,
    "--accelerator-type",
    accelerator,
    "--runtime-version",
    cloud.runtime_version,
    *CAPACITY[cloud.capacity],
  )


def delete_command(cloud: Cloud, name: str) -> list[str]:
  """The command that deletes a slice: its queued resource and node."""
  return gcloud(cloud, "queued-resources", "delete", name, "--force", "--quiet")


def install_command(package: str) -> list[list[str]]:
  """What every host of a new slice runs first, step by step: uv, a Python that the project supports,
  and a venv (VENV) with `package`."""
  # The image's python3 only runs uv (`-m uv`: pip's --user scripts directory may not be on a remote
  # command's PATH). --allow-existing: a slice that an earlier launch left keeps its venv and updates it
  # (uv refuses an existing venv otherwise).
  uv = ["python3", "-m", "uv"]
  return [
    ["python3", "-m", "pip", "install", "--user", "--quiet", f"uv=={UV_VERSION}"],
    [*uv, "python", "install", "--quiet", PYTHON_VERSION],
    [*uv, "venv", "--quiet", "--python", PYTHON_VERSION, "--managed-python", "--allow-existing", VENV],
    [*uv, "pip", "install", "--quiet", "--python", VENV_PYTHON, package],
  ]


def ssh_command(cloud: Cloud, name: str, *argvs: list[str]) -> list[str]:
  """The command that runs the argument lists one after another on every host of a slice, up to the
  first that fails."""
  # The remote shell parses --command: it gets each argument list quoted, never values formatted in.
  command = " && ".join(shlex.join(argv) for argv in argvs)
  return gcloud(cloud, "tpu-vm", "ssh", name, "--worker=all", "--quiet", f"--command={command}")


def slice_names(p: plan.Plan, count: int) -> list[str]:
  """The names of the pool's slices: valid queued resource and node names (a-z, 0-9 and '-', a letter
  first, at most 63 characters) that no other study or workdir uses."""
  # The prefix leaves 7 characters for '-<i>', whatever the count: a launch with more --slices than
  # the last one finds that one's slices under the same names.
  return [f"{plan.study_key(p, 56)}-{i}" for i in range(count)]


def queued_resources(cloud: Cloud, dry_run: bool) -> dict[str, str]:
  """The state (ACTIVE, WAITING_FOR_RESOURCES, SUSPENDED ...) of each queued resource, by name."""
  out = plan.call(gcloud(cloud, "queued-resources", "list", "--format=json"), dry_run)
  return {qr["name"].rsplit("/", 1)[-1]: qr.get("state", {}).get("state", "") for qr in json.loads(out or "[]")}


def slice_state(state: str | None) -> str:
  """What a queued resource's state (None: not created yet) means for the run it has."""
  if state == "ACTIVE":
    return "running"
  return "failed" if state in LOST else "queued"


def run_states(
  p: plan.Plan, slices: dict[str, str], held: dict[str, str | None], dry_run: bool = False
) -> list[plan.RunState]:
  """Every run's state from its result.json and the slice that has it (`held`: slice -> run id); a dry
  run reads no result."""
  engine = {run_id: (slice_state(slices.get(name)), name) for name, run_id in held.items() if run_id}
  return plan.run_states(p.runs, None if dry_run else p.workdir, engine)


class Pool:
  """The launch's slices and their runs, driven one look (`step`) at a time."""

  def __init__(self, p: plan.Plan, cloud: Cloud, size: int, retries: plan.Retries):
    self.p, self.cloud, self.retries = p, cloud, retries
    self.slots = [Slot(name) for name in slice_names(p, size)]
    self.slices: dict[str, str] = {}  # The queued resources as this launcher last knew them.
    self.saved: dict[str, str | None] | None = None

  def held(self) -> dict[str, str | None]:
    """Slice name -> the id of the run it has (None: idle)."""
    return {s.name: s.run.id if s.run else None for s in self.slots}

  def busy(self) -> bool:
    """Whether a slice has a run or a command in progress."""
    return any(s.run is not None or s.proc is not None for s in self.slots)

  def in_progress(self) -> bool:
    """Whether a command is in progress on a slice."""
    return any(s.proc is not None for s in self.slots)

  def step(self) -> list[plan.RunState]:
    """One look: drops lost slices, collects ended commands, hands out ready runs, starts commands."""
    self.slices = queued_resources(self.cloud, dry_run=False)
    for slot in self.slots:
      state = self.slices.get(slot.name)
      if state in LOST:
        self.lose(slot)
      elif slot.proc is not None and slot.proc.poll() is not None:
        self.collect(slot)
    states = run_states(self.p, self.slices, self.held())
    waiting = [s.run for s in plan.ready(states)]
    left = sum(s.state == "missing" for s in states)  # Runs that no slice has, ready or not.
    for slot in self.slots:
      if slot.run is None and waiting:
        slot.run = waiting.pop(0)
        left -= 1
      state = self.slices.get(slot.name)
      if slot.run is not None and state is None:
        plan.call(create_command(self.p, self.cloud, slot.name), False)
        self.slices[slot.name] = "CREATING"
        print(f"creating slice {slot.name} for {slot.run.id}", flush=True)
      elif slot.run is None and state is not None and not left:
        self.delete(slot)
        print(f"deleted slice {slot.name}: no run is left for it", flush=True)
      elif slot.run is not None and state == "ACTIVE" and slot.proc is None:
        self.start(slot)
    self.save()
    return states

  def collect(self, slot: Slot) -> None:
    """Takes in the ended command of a slice that is not lost: the install (the run starts next), or the run."""
    code, slot.proc = slot.proc.returncode, None
    if code == 0 and not slot.installed:
      slot.installed = True
      return
    run, slot.run = slot.run, None
    if code == 0 and results.read_result(self.p.workdir / "runs" / run.id) is not None:
      print(f"{run.id} done on {slot.name}", flush=True)
      return
    print(f"{run.id} ended without result.json on {slot.name} (exit {code}); back to the queue", flush=True)
    self.retries.spend(run.id, slot.name)  # Not a preemption: `step` deals with lost slices first.

  def lose(self, slot: Slot) -> None:
    """Deletes a preempted slice; its run goes back to the queue."""
    if slot.run is not None:
      print(f"slice {slot.name} was preempted; {slot.run.id} goes back to the queue", flush=True)
    self.delete(slot)

  def delete(self, slot: Slot) -> None:
    """Ends the slice's command and run, and deletes the slice."""
    if slot.proc is not None:
      slot.proc.kill()
      slot.proc.wait()
    slot.run, slot.proc, slot.installed = None, None, False
    plan.call(delete_command(self.cloud, slot.name), False)
    self.slices.pop(slot.name, None)

  def start(self, slot: Slot) -> None:
    """Starts the slice's next command on every host: the install on a new slice, then the run."""
    if slot.installed:
      argvs = [plan.host_command(self.p.workdir, slot.run, python=VENV_PYTHON)]
    else:
      argvs = install_command(self.cloud.package)
    slot.proc = subprocess.Popen(ssh_command(self.cloud, slot.name, *argvs), stdin=subprocess.DEVNULL)

  def stop(self) -> None:
    """Ends every command in progress and deletes every slice, so that none is paid for undriven."""
    for slot in self.slots:
      try:
        if slot.name in self.slices:
          self.delete(slot)
      except plan.LaunchError as e:
        print(e, file=sys.stderr)
      slot.run = None
    self.save()

  def save(self) -> None:
    """Writes which run each slice has to the workdir (POOL), for `status`, when that changed."""
    held = self.held()
    if held != self.saved:
      results.write_json(self.p.workdir / POOL, held)
      self.saved = held


def drive(pool: Pool, watch: bool, poll_seconds: float) -> None:
  """Steps the pool until every run is done; without --watch, until no command is in progress."""
  last = ""
  while True:
    states = pool.step()
    line = plan.counts(states)
    if line != last:
      print(line, flush=True)
      last = line
    if all(s.state == "done" for s in states) and not pool.busy():
      print(plan.format_status(states))
      return
    if not watch and not pool.in_progress():
      print("no command is in progress; launch again when the slices are ACTIVE (or use --watch)")
      return
    time.sleep(poll_seconds)


def dry_run(p: plan.Plan, cloud: Cloud, size: int) -> None:
  """Prints the commands of a launch: list the slices, create them, run each ready run, delete them."""
  queued_resources(cloud, dry_run=True)
  waiting = [s.run for s in plan.ready(run_states(p, {}, {}, dry_run=True))]
  names = slice_names(p, min(size, len(waiting)))
  for name in names:
    plan.call(create_command(p, cloud, name), True)
  for i, run in enumerate(waiting):
    name = names[i % len(names)]
    if i < len(names):
      plan.call(ssh_command(cloud, name, *install_command(cloud.package)), True)
    plan.call(ssh_command(cloud, name, plan.host_command(p.workdir, run, python=VENV_PYTHON)), True)
  for name in names:
    plan.call(delete_command(cloud, name), True)


def show_status(p: plan.Plan, cloud: Cloud, dry_run: bool) -> None:
  """Prints the status table: each run's state, from its result.json and the slice that has it."""
  slices = queued_resources(cloud, dry_run)
  pool_file = p.workdir / POOL
  held = json.loads(pool_file.read_text()) if not dry_run and pool_file.exists() else {}
  print(plan.format_status(run_states(p, slices, held, dry_run)))


def launch(p: plan.Plan, cloud: Cloud) -> None:
  """Writes the plan and drives the pool; on an error, ends the runs and deletes the slices first."""
  f = flags.FLAGS
  plan.write_plan(p.study, p.runs, p.workdir)
  pool = Pool(p, cloud, f.slices, plan.Retries(f.retries))
  try:
    drive(pool, f.watch, f.poll_seconds)
  except plan.LaunchError:
    pool.stop()
    raise


def main(argv: list[str]) -> None:
  f = flags.FLAGS
  status = plan.is_status(argv, USAGE)
  for flag, allowed in (("project", "your Google Cloud project"), ("zone", "a zone with the slice's TPUs")):
    if not f[flag].value:
      sys.exit(f"invalid launch: --{flag} is missing; allowed: {allowed}")
  if not status and not f.package:
    sys.exit(
      "invalid launch: --package is missing; allowed: a pip requirement of this project with its "
      "'[tpu]' extra, such as 'scaling[tpu] @ git+https://github.com/ORG/scaling@COMMIT'"
    )
  with cli.resumable("launch.tpu"):  # Ctrl-C leaves the slices and the pool file to the next launch.
    p = plan.from_flags(USAGE, probe=not (status or f.dry_run))
    cloud = Cloud(f.project, f.zone, f.runtime_version or RUNTIMES[p.slice.generation], f.capacity, f.package)
    try:
      if status:
        show_status(p, cloud, f.dry_run)
        return
      print(f"{plan.summary(p, f.dry_run)}; up to {f.slices} slices at once", flush=True)
      if f.dry_run:
        dry_run(p, cloud, f.slices)
      else:
        launch(p, cloud)
    except plan.LaunchError as e:
      sys.exit(str(e))


if __name__ == "__main__":
  plan.define_flags()
  flags.DEFINE_string("project", None, "Google Cloud project of the slices.")
  flags.DEFINE_string("zone", None, "Zone of the slices, such as us-east5-a.")
  flags.DEFINE_string(
    "package",
    None,
    "pip requirement installed on every host, such as 'scaling[tpu] @ git+https://github.com/ORG/scaling@COMMIT'.",
  )
  flags.DEFINE_string(
    "runtime_version",
    None,
    f"TPU VM image; default: Cloud TPU's for the generation ({', '.join(f'{k}: {v}' for k, v in RUNTIMES.items())}).",
  )
  flags.DEFINE_enum("capacity", "on-demand", list(CAPACITY), "How the slices are provisioned.")
  flags.DEFINE_integer("slices", 1, "How many slices run at once, each taking the next ready run.", lower_bound=1)
  app.run(main, flags_parser=cli.flags_parser(USAGE))
