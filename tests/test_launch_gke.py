"""The GKE launcher against a recording kubectl: JobSet manifests (valid against JobSet's published
schema), dependency order, done runs skipped, failed JobSets submitted again, a run that keeps
failing, studies of one name apart, dry runs, bad input, status, Ctrl-C."""

import copy
import json
import os
import re
import shlex
import signal
import subprocess
import sys

import jsonschema
import pytest
import standins
from conftest import tiny_study

from launch import gke, plan

TOPOLOGY = "v5p-16"  # 8 chips on 2 hosts.
with open(os.path.join(os.path.dirname(__file__), "jobset", "jobset-v1alpha2.schema.json")) as f:
  PUBLISHED = json.load(f)  # See jobset/README.md.


def _strict(schema: dict) -> dict:
  """The schema with no unknown field: an object schema that lists its properties, and says nothing of
  others, takes no others."""
  schema = dict(schema)
  if "properties" in schema:
    schema["properties"] = {k: _strict(v) for k, v in schema["properties"].items()}
    if "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
      schema["additionalProperties"] = False
  for key in ("items", "additionalProperties", "not"):
    if isinstance(schema.get(key), dict):
      schema[key] = _strict(schema[key])
  for key in ("allOf", "anyOf", "oneOf"):
    if key in schema:
      schema[key] = [_strict(s) for s in schema[key]]
  return schema


# Kubernetes' own keywords (x-kubernetes-int-or-string, x-kubernetes-validations ...) are ignored.
STRICT = jsonschema.Draft7Validator(_strict(PUBLISHED))


def _errors(jobset: dict) -> list[str]:
  """Where and why a JobSet breaks the strict schema; none for a valid one."""
  assert (jobset["apiVersion"], jobset["kind"]) == ("jobset.x-k8s.io/v1alpha2", "JobSet")  # The schema's version.
  return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in STRICT.iter_errors(jobset)]


def _plan(workdir, topology=TOPOLOGY, **overrides) -> plan.Plan:
  return plan.load(tiny_study(**{**standins.STUDY, **overrides}), topology, str(workdir), probe=False)


def _args(tmp_path, workdir, *extra, **overrides):
  return [
    "--config",
    standins.write_config(tmp_path, **overrides),
    "--topology",
    TOPOLOGY,
    "--workdir",
    str(workdir),
    "--image",
    "img:1",
    *extra,
  ]


def _created(calls) -> list[dict]:
  """The JobSets that the launcher created, each checked against the strict schema."""
  created = [json.loads(c["stdin"]) for c in calls if c["argv"][:1] == ["create"]]
  assert all(not _errors(j) for j in created), [_errors(j) for j in created]
  return created


def _pod(jobset: dict) -> dict:
  return jobset["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]


def _run_of(jobset: dict) -> str:
  command = _pod(jobset)["containers"][0]["command"]
  return os.path.basename(os.path.dirname(command[command.index("--spec") + 1]))


def _rows(status: str) -> dict[str, list[str]]:
  """The status table's rows: run id -> kind, state and JobSet."""
  return {line.split()[0]: line.split()[1:] for line in status.splitlines()[1:-1]}


@pytest.mark.parametrize(
  "topology, hosts, tpus, accelerator, shape",
  [
    ("v5p-16", 2, 4, "tpu-v5p-slice", "2x2x2"),
    ("v5e-8", 1, 8, "tpu-v5-lite-podslice", "2x4"),
    ("v6e-16", 4, 4, "tpu-v6e-slice", "4x4"),
    ("v4-8", 1, 4, "tpu-v4-podslice", "2x2x1"),
  ],
)
def test_a_jobset_runs_the_host_command_on_every_host_of_the_slice(tmp_path, topology, hosts, tpus, accelerator, shape):
  p = _plan(tmp_path, topology, **{"mesh.shape": {"data": 1, "fsdp": 1, "tensor": -1}})
  run = p.runs[0]
  m = gke.manifest(p, run, "img:1", max_restarts=7, queue="")
  assert (m["apiVersion"], m["kind"]) == ("jobset.x-k8s.io/v1alpha2", "JobSet") and not _errors(m)
  key = gke.study_label(p)
  assert re.fullmatch(r"tiny-[0-9a-f]{6}", key)
  assert m["metadata"] == {"name": f"{key}-{run.id}", "labels": {"scaling/study": key, "scaling/run": run.id}}
  assert m["spec"]["failurePolicy"] == {"maxRestarts": 7} and m["spec"]["network"] == {"enableDNSHostnames": True}
  [replicated] = m["spec"]["replicatedJobs"]
  job = replicated["template"]["spec"]
  assert replicated["replicas"] == 1
  assert (job["parallelism"], job["completions"], job["completionMode"], job["backoffLimit"]) == (
    hosts,
    hosts,
    "Indexed",
    0,
  )
  pod = job["template"]["spec"]
  assert pod["nodeSelector"] == {
    "cloud.google.com/gke-tpu-accelerator": accelerator,
    "cloud.google.com/gke-tpu-topology": shape,
  }
  assert "serviceAccountName" not in pod  # The namespace's default.
  [container] = pod["containers"]
  assert container["image"] == "img:1" and container["resources"] == {"limits": {"google.com/tpu": tpus}}
  assert container["command"] == [
    "python3",
    "-m",
    "scaling.run",
    "--spec",
    f"{tmp_path}/runs/{run.id}/spec.json",
    "--distributed",
  ]
  queued = gke.manifest(p, run, "img:1", max_restarts=7, queue="multislice-queue")
  assert queued["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "multislice-queue" and not _errors(queued)
  identity = gke.manifest(p, run, "img:1", 7, "", service_account="scaling-writer")
  assert _pod(identity)["serviceAccountName"] == "scaling-writer" and not _errors(identity)


def test_every_jobset_fits_the_published_jobset_schema_with_no_unknown_field(tmp_path):
  p = _plan(tmp_path)
  for queue in ("", "multislice-queue"):
    for account in (None, "scaling-writer"):
      for run in p.runs:
        m = gke.manifest(p, run, "img:1", 10, queue, account)
        assert not _errors(m), (queue, account, run.id, _errors(m))
  assert {r.kind for r in p.runs} == {"pretrain", "finetune", "eft"}


POD_SPEC = ("spec", "replicatedJobs", 0, "template", "spec", "template", "spec")


@pytest.mark.parametrize(
  "where, field, misspelt",
  [
    (("spec",), "failurePolicy", "failurepolicy"),
    (("spec", "network"), "enableDNSHostnames", "enableDnsHostnames"),
    (("spec", "replicatedJobs", 0), "replicas", "replica"),
    (("spec", "replicatedJobs", 0, "template", "spec"), "completionMode", "completionmode"),
    (POD_SPEC, "nodeSelector", "nodeselector"),
    (POD_SPEC, "serviceAccountName", "serviceAccountname"),
    ((*POD_SPEC, "containers", 0), "command", "commands"),
  ],
)
def test_a_misspelt_field_fails_the_schema(tmp_path, where, field, misspelt):
  p = _plan(tmp_path)
  good = gke.manifest(p, p.runs[0], "img:1", 10, "multislice-queue", "scaling-writer")
  bad = copy.deepcopy(good)
  parent = bad
  for key in where:
    parent = parent[key]
  parent[misspelt] = parent.pop(field)
  assert _errors(good) == []
  where_text = ".".join(map(str, where))
  assert _errors(bad) == [f"{where_text}: Additional properties are not allowed ({misspelt!r} was unexpected)"]
  # The published schema lets unknown fields through; the API server would drop them.
  assert not list(jsonschema.Draft7Validator(PUBLISHED).iter_errors(bad))


def test_jobset_names_are_dns_labels_that_fit_the_pod_names_and_keep_the_hash(tmp_path):
  p = _plan(
    tmp_path, "v5p-64", **{"name": "A Very Long Study Name " * 4, "mesh.shape": {"data": 1, "fsdp": 8, "tensor": -1}}
  )
  names = [gke.jobset_name(p, r) for r in p.runs]
  limit = 63 - len("-slice-0-7-abcde")  # 8 hosts.
  assert all(re.fullmatch(r"[a-z][a-z0-9-]*[a-z0-9]", n) and len(n) <= limit for n in names)
  assert all(n.endswith(r.id[-10:]) for n, r in zip(names, p.runs)) and len(set(names)) == len(names)
  key = gke.study_label(p)  # The study's hash stays whole too.
  assert re.fullmatch(r"a-very-long-[a-z-]*-[0-9a-f]{6}", key) and all(n.startswith(f"{key}-") for n in names)


def test_studies_of_one_name_in_two_workdirs_never_share_a_jobset(tmp_path):
  standins.install(tmp_path)
  a, b = _plan(tmp_path / "a"), _plan(tmp_path / "b")
  names_a, names_b = ({gke.jobset_name(p, r) for r in p.runs} for p in (a, b))
  assert names_a.isdisjoint(names_b) and gke.study_label(a) != gke.study_label(b)
  running = {"replicatedJobsStatus": [{"name": "slice", "ready": 1}]}
  standins.set_state(
    tmp_path,
    {
      "jobsets": {gke.jobset_name(a, r): {**gke.manifest(a, r, "img:1", 10, ""), "status": running} for r in a.runs[:2]}
    },
  )
  status_b = standins.launch(tmp_path, "gke", "status", *_args(tmp_path, tmp_path / "b"))
  assert status_b.returncode == 0, status_b.stderr
  assert status_b.stdout.splitlines()[-1] == "10 runs: 0 done, 0 running, 0 queued, 0 failed, 10 missing"
  launched = standins.launch(tmp_path, "gke", *_args(tmp_path, tmp_path / "b"))
  assert launched.returncode == 0, launched.stderr
  assert {j["metadata"]["name"] for j in _created(standins.calls(tmp_path))} == {
    gke.jobset_name(b, r) for r in b.runs[:2]
  }
  status_a = standins.launch(tmp_path, "gke", "status", *_args(tmp_path, tmp_path / "a"))
  assert status_a.returncode == 0, status_a.stderr
  rows = _rows(status_a.stdout)
  assert [rows[r.id] for r in a.runs[:2]] == [["pretrain", "running", gke.jobset_name(a, r)] for r in a.runs[:2]]
  assert status_a.stdout.splitlines()[-1] == "10 runs: 0 done, 2 running, 0 queued, 0 failed, 8 missing"
  selectors = [c["argv"][3] for c in standins.calls(tmp_path) if c["argv"][0] == "get"]
  assert selectors == [f"scaling/study={gke.study_label(p)}" for p in (b, b, a)]


def test_a_service_account_runs_every_pod(tmp_path):
  standins.install(tmp_path)
  out = standins.launch(tmp_path, "gke", *_args(tmp_path, tmp_path / "w", "--service_account=scaling.writer-1"))
  assert out.returncode == 0, out.stderr
  created = _created(standins.calls(tmp_path))
  assert len(created) == 2 and all(_pod(j)["serviceAccountName"] == "scaling.writer-1" for j in created)


def test_runs_go_after_their_dependencies_and_done_runs_never(tmp_path):
  standins.install(tmp_path)
  (tmp_path / "x").write_text("a shell's `rm -rf x` would delete this")
  workdir = tmp_path / standins.HOSTILE
  first = standins.launch(tmp_path, "gke", *_args(tmp_path, workdir, name=standins.HOSTILE))
  assert first.returncode == 0, first.stderr
  calls = standins.calls(tmp_path)
  key = gke.study_label(_plan(workdir, name=standins.HOSTILE))
  assert re.fullmatch(r"touch-pwned-[a-z-]*-[0-9a-f]{6}", key)
  assert calls[0]["argv"] == ["get", "jobsets", "-l", f"scaling/study={key}", "-o", "json"]
  specs = {d.name: json.loads((d / "spec.json").read_text()) for d in (workdir / "runs").iterdir()}
  assert len(specs) == 10 and json.loads((workdir / "study.json").read_text())["name"] == standins.HOSTILE
  created = _created(calls)
  assert [specs[_run_of(j)]["kind"] for j in created] == ["pretrain", "pretrain"]
  for jobset in created:  # The hostile workdir reaches the container's command as it is.
    command = _pod(jobset)["containers"][0]["command"]
    assert command[4] == f"{workdir}/runs/{_run_of(jobset)}/spec.json"
    assert jobset["metadata"]["labels"]["scaling/study"] == key

  st = standins.state(tmp_path)
  for jobset in st["jobsets"].values():  # The bases finish; one fine-tune is already done.
    jobset["status"] = {"conditions": [{"type": "Completed", "status": "True"}]}
    standins.write_result(str(workdir / "runs" / _run_of(jobset) / "spec.json"))
  done_ft = next(i for i, s in specs.items() if s["kind"] == "finetune")
  standins.write_result(str(workdir / "runs" / done_ft / "spec.json"))
  standins.set_state(tmp_path, {**st, "on_create": "complete"})
  second = standins.launch(
    tmp_path, "gke", *_args(tmp_path, workdir, "--watch", "--poll_seconds=0", name=standins.HOSTILE)
  )
  assert second.returncode == 0, second.stderr
  assert "10 runs: 10 done, 0 running, 0 queued, 0 failed, 0 missing" in second.stdout
  created = [_run_of(j) for j in _created(standins.calls(tmp_path)[len(calls) :])]
  assert [specs[i]["kind"] for i in created] == ["finetune"] * 3 + ["eft"] * 4  # EFT runs need the fine-tunes.
  assert done_ft not in created and len(set(created)) == 7
  assert all((workdir / "runs" / i / "result.json").exists() for i in specs)
  assert (tmp_path / "x").exists() and not list(tmp_path.rglob("PWNED"))
  assert not os.path.exists(os.path.join(standins.REPO, "PWNED"))


def _failing_and_running(tmp_path, workdir) -> tuple[plan.Plan, list]:
  """Done bases; fine-tunes whose JobSets failed, completed without a result, run and wait (Kueue)."""
  p = _plan(workdir)
  plan.write_plan(p.study, p.runs, p.workdir)
  for r in p.runs[:2]:
    standins.write_result(str(workdir / "runs" / r.id / "spec.json"))
  fts = [r for r in p.runs if r.kind == "finetune"]
  statuses = [
    {"status": {"conditions": [{"type": "Failed", "status": "True"}]}},
    {"status": {"conditions": [{"type": "Completed", "status": "True"}]}},
    {"status": {"replicatedJobsStatus": [{"name": "slice", "ready": 1}]}},
    {"spec": {"suspend": True}, "status": {}},
  ]
  jobsets = {}
  for r, extra in zip(fts, statuses):
    m = gke.manifest(p, r, "img:1", 10, "")
    jobsets[m["metadata"]["name"]] = {**m, "spec": {**m["spec"], **extra.get("spec", {})}, "status": extra["status"]}
  standins.set_state(tmp_path, {"jobsets": jobsets})
  return p, fts


def test_status_then_failed_jobsets_are_submitted_again_and_running_ones_left_alone(tmp_path):
  standins.install(tmp_path)
  workdir = tmp_path / "w"
  p, fts = _failing_and_running(tmp_path, workdir)
  status = standins.launch(tmp_path, "gke", "status", *_args(tmp_path, workdir))
  assert status.returncode == 0, status.stderr
  rows = _rows(status.stdout)
  names = [gke.jobset_name(p, r) for r in fts]
  assert [rows[r.id] for r in p.runs[:2]] == [["pretrain", "done"]] * 2
  assert [rows[r.id] for r in fts] == [
    ["finetune", state, name] for state, name in zip(["failed", "failed", "running", "queued"], names)
  ]
  assert all(rows[r.id][:2] == ["eft", "missing"] for r in p.runs[6:])
  assert status.stdout.splitlines()[-1] == "10 runs: 2 done, 1 running, 1 queued, 2 failed, 4 missing"
  assert [c["argv"][0] for c in standins.calls(tmp_path)] == ["get"]

  launched = standins.launch(tmp_path, "gke", *_args(tmp_path, workdir))
  assert launched.returncode == 0, launched.stderr
  calls = [c["argv"] for c in standins.calls(tmp_path)[2:]]
  delete = lambda name: ["delete", "jobset", name, "--cascade=foreground", "--ignore-not-found"]
  assert calls == [delete(names[0]), ["create", "-f", "-"], delete(names[1]), ["create", "-f", "-"]]
  assert [_run_of(j) for j in _created(standins.calls(tmp_path))] == [fts[0].id, fts[1].id]


def test_a_run_that_keeps_failing_stops_the_watch(tmp_path):
  standins.install(tmp_path)
  standins.set_state(tmp_path, {"on_create": "fail"})
  workdir = tmp_path / "w"
  out = standins.launch(tmp_path, "gke", *_args(tmp_path, workdir, "--watch", "--poll_seconds=0", "--retries=1"))
  assert out.returncode == 1 and "Traceback" not in out.stderr
  assert re.fullmatch(
    r"run pt-d32l2-20-\w+ failed 2 times \(last on tiny-[0-9a-f]{6}-pt-d32l2-20-\w+\); gave up "
    r"\(--retries=1\)\n",
    out.stderr,
  )
  verbs = [c["argv"][0] for c in standins.calls(tmp_path)]
  assert verbs == ["get", "create", "create", "get", "delete", "create", "delete", "create", "get"]


def test_dry_run_prints_commands_and_manifests_and_touches_nothing(tmp_path):
  standins.install(tmp_path)
  workdir = tmp_path / "w"
  out = standins.launch(tmp_path, "gke", *_args(tmp_path, workdir, "--dry-run"))
  assert out.returncode == 0, out.stderr
  lines = out.stdout.splitlines()[1:]
  p = _plan(workdir)
  assert lines[0] == f"kubectl get jobsets -l scaling/study={gke.study_label(p)} -o json"
  assert lines[1::2] == ["kubectl create -f -"] * 2
  assert [json.loads(line) for line in lines[2::2]] == [gke.manifest(p, r, "img:1", 10, "") for r in p.runs[:2]]
  assert standins.calls(tmp_path) == [] and not workdir.exists()


@pytest.mark.parametrize(
  "args, message",
  [
    (["--topology=v9-8"], "invalid launch: --topology='v9-8' is not a TPU slice"),
    (["--image="], "invalid launch: --image is missing; allowed: a container image"),
    (
      [
        "--topology=v5e-16",
        "--config.mesh.shape.fsdp=1",
        "--config.mesh.shape.tensor=-1",
        "--config.pretrain.train.batch_size=6",
      ],
      "invalid launch: pretrain.train.batch_size=6 does not divide across the 4 hosts of v5e-16",
    ),
    (
      ["--service_account=Scaling_Writer"],
      (
        "invalid launch: --service_account='Scaling_Writer' is not a Kubernetes "
        "service account name; allowed: at most 253 characters of a-z, 0-9"
      ),
    ),
    (["--service_account="], "invalid launch: --service_account='' is not a Kubernetes service account name"),
    (["--service_account=writer."], "invalid launch: --service_account='writer.' is not a Kubernetes service"),
    ([f"--service_account={'a' * 254}"], f"invalid launch: --service_account='{'a' * 254}' is not a Kubernetes"),
  ],
)
def test_bad_input_fails_in_one_line_before_kubectl(tmp_path, args, message):
  standins.install(tmp_path)
  out = standins.launch(tmp_path, "gke", *_args(tmp_path, tmp_path / "w"), *args)
  assert out.returncode == 1 and out.stderr.startswith(message) and out.stderr.count("\n") == 1, out.stderr
  assert standins.calls(tmp_path) == [] and not (tmp_path / "w").exists()


def _interrupted(tmp_path, args: list[str]) -> subprocess.CompletedProcess:
  """Runs the launcher with the stand-ins until it has submitted and waits to look again, then presses Ctrl-C."""
  env = {**os.environ, "PYTHONPATH": standins.REPO, "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}"}
  argv = [sys.executable, "-m", "launch.gke", *args]
  # SIGINT as a shell leaves it for a foreground command, whatever this process was started with.
  proc = subprocess.Popen(
    argv,
    cwd=tmp_path,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
  )
  try:
    lines = []
    for line in proc.stdout:
      lines.append(line)
      if "; submitted " in line:  # The counts line: then it sleeps for --poll_seconds.
        break
    proc.send_signal(signal.SIGINT)  # To it alone: asleep, it has no kubectl running that a terminal's would reach.
    out, err = proc.communicate(timeout=60)
  finally:
    proc.kill()  # Nothing left to kill, unless the interrupt did not stop it.
  return subprocess.CompletedProcess(argv, proc.returncode, "".join(lines) + out, err)


@pytest.mark.slow
def test_ctrl_c_stops_a_watch_in_one_line_and_the_same_command_resumes(tmp_path):
  standins.install(tmp_path)  # A new JobSet stays queued.
  workdir = tmp_path / "w"
  args = _args(tmp_path, workdir, "--watch", "--poll_seconds=600")
  first = _interrupted(tmp_path, args)
  assert first.returncode == 130, first.stderr
  resume = f"interrupted; the same command resumes: python -m launch.gke {shlex.join(args)}\n"
  assert first.stderr.lstrip("\n") == resume  # One line, after the blank one that ends the ^C line.
  assert first.stdout.splitlines()[-1] == "10 runs: 0 done, 0 running, 0 queued, 0 failed, 10 missing; submitted 2"
  assert [c["argv"][0] for c in standins.calls(tmp_path)] == ["get", "create", "create"]

  again = _interrupted(tmp_path, args)
  assert again.returncode == 130 and again.stderr.lstrip("\n") == resume, again.stderr
  assert again.stdout.splitlines()[-1] == "10 runs: 0 done, 0 running, 2 queued, 0 failed, 8 missing; submitted 0"
  assert [c["argv"][0] for c in standins.calls(tmp_path)] == ["get", "create", "create", "get"]
  status = standins.launch(tmp_path, "gke", "status", *_args(tmp_path, workdir))
  assert status.returncode == 0, status.stderr
  p = _plan(workdir)
  rows = _rows(status.stdout)
  assert [rows[r.id] for r in p.runs[:2]] == [["pretrain", "queued", gke.jobset_name(p, r)] for r in p.runs[:2]]
  assert sorted(j["metadata"]["name"] for j in _created(standins.calls(tmp_path))) == sorted(
    gke.jobset_name(p, r) for r in p.runs[:2]
  )
