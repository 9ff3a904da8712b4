"""Recording stand-ins for kubectl and gcloud, for launcher tests that must not reach a cluster.

    standins.install(tmp_path)                      # tmp_path/bin/kubectl and tmp_path/bin/gcloud
    standins.set_state(tmp_path, {...})             # what exists, and what runs will do
    standins.launch(tmp_path, "gke", "--config", standins.write_config(tmp_path), ...)
    standins.calls(tmp_path)                        # every call: {"tool", "argv", "stdin"?, "command"?}

Each stand-in appends its call as a JSON line to calls.jsonl and answers from state.json. The state
says which JobSets and queued resources exist and how they are, and what happens next:
  "on_create": "complete" (the JobSet's run writes result.json) or "fail" (the JobSet fails);
    otherwise a new JobSet waits (queued);
  "create_state": the state of a new queued resource (default ACTIVE);
  "ssh": {run id: ["fail" | "preempt", ...]}: what the run's next attempts do; otherwise it writes
    result.json, after "run_seconds" (default 0).
`tpu-vm ssh --command=CMD` splits CMD with shlex.split and never runs it: an `end` record follows a
run's call once it is over. A stand-in exits 3 on a call that it does not know.

`launch` runs a launcher in tmp_path with the stand-ins first on PATH, so that a file that a shell
made of a config value would land there.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import subprocess
import sys
import time

import processes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A study name or path that a shell would act on: it must reach every command as it is.
HOSTILE = "$(touch PWNED); rm -rf x; echo 'q\""
# conftest.tiny_study overrides: two base sizes, a mesh over every chip, 2 + 4 + 4 runs.
STUDY = {
  "model.sizes": ("d32l2", "d48l2"),
  "mesh.shape": {"data": 1, "fsdp": -1, "tensor": 1},
  "eft.enabled": True,
  "eft.betas": (1.0,),
  "eft.d_f": (16,),
}
CONFIG = """
import sys
sys.path.insert(0, {tests!r})
from conftest import tiny_study

def get_config():
  return tiny_study(**{overrides!r})
"""
SHIM = "#!{python}\nimport sys\nsys.path.insert(0, {tests!r})\nimport standins\nstandins.main({root!r})\n"
RUN_MODULE = ["-m", "scaling.run"]  # A run's remote command: a host's python, then these.


def is_run(command: list[str]) -> bool:
  """Whether a remote command is a run, with whichever python (not the install)."""
  return command[1:3] == RUN_MODULE


def install(root) -> None:
  """Writes the stand-ins kubectl and gcloud into root/bin, with an empty state."""
  bin_dir = os.path.join(str(root), "bin")
  os.makedirs(bin_dir, exist_ok=True)
  for tool in ("kubectl", "gcloud"):
    path = os.path.join(bin_dir, tool)
    with open(path, "w") as f:
      f.write(SHIM.format(python=sys.executable, tests=os.path.join(REPO, "tests"), root=str(root)))
    os.chmod(path, 0o755)
  set_state(root, {})


def write_config(root, **overrides) -> str:
  """A study config file in root: conftest's tiny study with STUDY's overrides and these."""
  path = os.path.join(str(root), "study_config.py")
  with open(path, "w") as f:
    f.write(CONFIG.format(tests=os.path.join(REPO, "tests"), overrides={**STUDY, **overrides}))
  return path


def launch(root, module: str, *args: str) -> subprocess.CompletedProcess:
  """Runs `python -m launch.<module> ARGS` in root, with the stand-ins first on PATH."""
  env = {**os.environ, "PYTHONPATH": REPO, "PATH": f"{os.path.join(str(root), 'bin')}{os.pathsep}{os.environ['PATH']}"}
  return processes.run([sys.executable, "-m", f"launch.{module}", *args], cwd=str(root), env=env)


def set_state(root, state: dict) -> None:
  """Replaces what the stand-ins see."""
  with open(os.path.join(str(root), "state.json"), "w") as f:
    json.dump(state, f)


def state(root) -> dict:
  """What the stand-ins see now."""
  with open(os.path.join(str(root), "state.json")) as f:
    return json.load(f)


def calls(root) -> list[dict]:
  """Every call recorded so far, in order."""
  path = os.path.join(str(root), "calls.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f]


def write_result(spec_path: str) -> None:
  """Writes result.json beside a spec, as the run would."""
  with open(spec_path) as f:
    spec = json.load(f)
  with open(os.path.join(os.path.dirname(spec_path), "result.json"), "w") as f:
    json.dump({"id": spec["id"], "kind": spec["kind"], "metrics": {}}, f)


def _kubectl(args: list[str], stdin: str | None, st: dict) -> int:
  """Answers get, create and delete of JobSets; returns the exit code."""
  jobsets = st.setdefault("jobsets", {})
  if args[:2] == ["get", "jobsets"] and "-l" in args:
    key, value = args[args.index("-l") + 1].split("=", 1)
    print(json.dumps({"items": [j for j in jobsets.values() if j["metadata"]["labels"].get(key) == value]}))
    return 0
  if args[:3] == ["create", "-f", "-"]:
    jobset = json.loads(stdin)
    name = jobset["metadata"]["name"]
    if name in jobsets:
      print(f'Error from server (AlreadyExists): jobsets "{name}" already exists', file=sys.stderr)
      return 1
    outcome = st.get("on_create")
    if outcome == "complete":
      command = jobset["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["containers"][0]["command"]
      write_result(command[command.index("--spec") + 1])
    condition = {"complete": "Completed", "fail": "Failed"}.get(outcome)
    jobset["status"] = {"conditions": [{"type": condition, "status": "True"}]} if condition else {}
    jobsets[name] = jobset
    return 0
  if args[:2] == ["delete", "jobset"]:
    jobsets.pop(args[2], None)
    return 0
  return 3


def _gcloud(args: list[str], record: dict, st: dict) -> int:
  """Answers list, create and delete of queued resources, and ssh; returns the exit code."""
  if args[:3] != ["compute", "tpus", "queued-resources"] and args[:3] != ["compute", "tpus", "tpu-vm"]:
    return 3
  resources = st.setdefault("queued_resources", {})
  verb, rest = args[3], args[4:]
  if verb == "list":
    project, zone = rest[rest.index("--project") + 1], rest[rest.index("--zone") + 1]
    print(
      json.dumps(
        [
          {"name": f"projects/{project}/locations/{zone}/queuedResources/{name}", "state": {"state": s}}
          for name, s in resources.items()
        ]
      )
    )
    return 0
  if verb == "create":
    if rest[0] in resources:
      print(f"ERROR: queued resource {rest[0]} already exists", file=sys.stderr)
      return 1
    resources[rest[0]] = st.get("create_state", "ACTIVE")
    return 0
  if verb == "delete":
    return 0 if resources.pop(rest[0], None) else 1
  if verb == "ssh":
    command = shlex.split(next(a for a in rest if a.startswith("--command="))[len("--command=") :])
    record["command"] = command
    if not is_run(command):
      return 0  # The install.
    spec = command[command.index("--spec") + 1]
    run_id = os.path.basename(os.path.dirname(spec))
    outcome = (st.get("ssh", {}).get(run_id) or ["ok"]).pop(0)
    if outcome == "preempt":
      resources[rest[0]] = "SUSPENDED"
    return {"fail": 1, "preempt": 255}.get(outcome, 0)
  return 3


@contextlib.contextmanager
def _locked(root: str):
  """Holds the stand-ins' lock."""
  with open(os.path.join(root, "lock"), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # Parallel ssh calls share the log and the state.
    yield


def _log(root: str, record: dict) -> None:
  """Appends a record to calls.jsonl."""
  with open(os.path.join(root, "calls.jsonl"), "a") as f:
    f.write(json.dumps(record) + "\n")


def main(root: str) -> None:
  """The stand-in's program: record the call, answer it from the state and update the state."""
  tool, args = os.path.basename(sys.argv[0]), sys.argv[1:]
  stdin = sys.stdin.read() if args[-2:] == ["-f", "-"] else None
  record = {"tool": tool, "argv": args, **({"stdin": stdin} if stdin is not None else {})}
  with _locked(root):
    st = state(root)
    code = _kubectl(args, stdin, st) if tool == "kubectl" else _gcloud(args, record, st)
    set_state(root, st)
    _log(root, record)
  command = record.get("command", [])
  if code == 0 and is_run(command):
    time.sleep(st.get("run_seconds", 0))  # Outside the lock: runs on different slices overlap.
    spec = command[command.index("--spec") + 1]
    write_result(spec)
    with _locked(root):
      _log(root, {"tool": tool, "end": os.path.basename(os.path.dirname(spec))})
  if code == 3:
    print(f"{tool} stand-in: unexpected call {args}", file=sys.stderr)
  sys.exit(code)
