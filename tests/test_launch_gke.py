"""The GKE launcher against a recording kubectl: JobSet manifests, dependency order, done runs
skipped, failed JobSets submitted again, a run that keeps failing, dry runs, bad input, status."""

import json
import os
import re

import pytest
import standins
from conftest import tiny_study

from launch import gke, plan

TOPOLOGY = "v5p-16"  # 8 chips on 2 hosts.


def _plan(workdir, topology=TOPOLOGY, **overrides) -> plan.Plan:
  return plan.load(tiny_study(**{**standins.STUDY, **overrides}), topology, str(workdir), probe=False)


def _args(tmp_path, workdir, *extra, **overrides):
  return ["--config", standins.write_config(tmp_path, **overrides), "--topology", TOPOLOGY,
          "--workdir", str(workdir), "--image", "img:1", *extra]


def _created(calls) -> list[dict]:
  return [json.loads(c["stdin"]) for c in calls if c["argv"][:1] == ["create"]]


def _run_of(jobset: dict) -> str:
  command = jobset["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["containers"][0]["command"]
  return os.path.basename(os.path.dirname(command[command.index("--spec") + 1]))


@pytest.mark.parametrize("topology, hosts, tpus, accelerator, shape", [
    ("v5p-16", 2, 4, "tpu-v5p-slice", "2x2x2"), ("v5e-8", 1, 8, "tpu-v5-lite-podslice", "2x4"),
    ("v6e-16", 4, 4, "tpu-v6e-slice", "4x4"), ("v4-8", 1, 4, "tpu-v4-podslice", "2x2x1")])
def test_a_jobset_runs_the_host_command_on_every_host_of_the_slice(tmp_path, topology, hosts, tpus, accelerator,
                                                                     shape):
  p = _plan(tmp_path, topology, **{"mesh.shape": {"data": 1, "fsdp": 1, "tensor": -1}})
  run = p.runs[0]
  m = gke.manifest(p, run, "img:1", max_restarts=7, queue="")
  assert (m["apiVersion"], m["kind"]) == ("jobset.x-k8s.io/v1alpha2", "JobSet")
  assert m["metadata"] == {"name": f"tiny-{run.id}", "labels": {"scaling/study": "tiny", "scaling/run": run.id}}
  assert m["spec"]["failurePolicy"] == {"maxRestarts": 7} and m["spec"]["network"] == {"enableDNSHostnames": True}
  [replicated] = m["spec"]["replicatedJobs"]
  job = replicated["template"]["spec"]
  assert replicated["replicas"] == 1
  assert (job["parallelism"], job["completions"], job["completionMode"], job["backoffLimit"]) == \
      (hosts, hosts, "Indexed", 0)
  pod = job["template"]["spec"]
  assert pod["nodeSelector"] == {"cloud.google.com/gke-tpu-accelerator": accelerator,
                                 "cloud.google.com/gke-tpu-topology": shape}
  [container] = pod["containers"]
  assert container["image"] == "img:1" and container["resources"] == {"limits": {"google.com/tpu": tpus}}
  assert container["command"] == ["python3", "-m", "scaling.run", "--spec", f"{tmp_path}/runs/{run.id}/spec.json",
                                  "--distributed"]
  queued = gke.manifest(p, run, "img:1", max_restarts=7, queue="multislice-queue")
  assert queued["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "multislice-queue"


def test_jobset_names_are_dns_labels_that_fit_the_pod_names_and_keep_the_hash(tmp_path):
  p = _plan(tmp_path, "v5p-64", **{"name": "A Very Long Study Name " * 4, "mesh.shape": {"data": 1, "fsdp": 8,
                                                                                         "tensor": -1}})
  names = [gke.jobset_name(p, r) for r in p.runs]
  limit = 63 - len("-slice-0-7-abcde")  # 8 hosts.
  assert all(re.fullmatch(r"[a-z][a-z0-9-]*[a-z0-9]", n) and len(n) <= limit for n in names)
  assert all(n.endswith(r.id[-10:]) for n, r in zip(names, p.runs)) and len(set(names)) == len(names)
  assert names[0].startswith("a-very-long-study-name-")


def test_runs_go_after_their_dependencies_and_done_runs_never(tmp_path):
  standins.install(tmp_path)
  (tmp_path / "x").write_text("a shell's `rm -rf x` would delete this")
  workdir = tmp_path / standins.HOSTILE
  first = standins.launch(tmp_path, "gke", *_args(tmp_path, workdir, name=standins.HOSTILE))
  assert first.returncode == 0, first.stderr
  calls = standins.calls(tmp_path)
  assert calls[0]["argv"] == ["get", "jobsets", "-l", "scaling/study=touch-pwned-rm-rf-x-echo-q", "-o", "json"]
  specs = {d.name: json.loads((d / "spec.json").read_text()) for d in (workdir / "runs").iterdir()}
  assert len(specs) == 10 and json.loads((workdir / "study.json").read_text())["name"] == standins.HOSTILE
  created = _created(calls)
  assert [specs[_run_of(j)]["kind"] for j in created] == ["pretrain", "pretrain"]
  for jobset in created:  # The hostile workdir reaches the container's command as it is.
    command = jobset["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[4] == f"{workdir}/runs/{_run_of(jobset)}/spec.json"
    assert jobset["metadata"]["labels"]["scaling/study"] == "touch-pwned-rm-rf-x-echo-q"

  st = standins.state(tmp_path)
  for jobset in st["jobsets"].values():  # The bases finish; one fine-tune is already done.
    jobset["status"] = {"conditions": [{"type": "Completed", "status": "True"}]}
    standins.write_result(str(workdir / "runs" / _run_of(jobset) / "spec.json"))
  done_ft = next(i for i, s in specs.items() if s["kind"] == "finetune")
  standins.write_result(str(workdir / "runs" / done_ft / "spec.json"))
  standins.set_state(tmp_path, {**st, "on_create": "complete"})
  second = standins.launch(tmp_path, "gke", *_args(tmp_path, workdir, "--watch", "--poll_seconds=0",
                                                            name=standins.HOSTILE))
  assert second.returncode == 0, second.stderr
  assert "10 runs: 10 done, 0 running, 0 queued, 0 failed, 0 missing" in second.stdout
  created = [_run_of(j) for j in _created(standins.calls(tmp_path)[len(calls):])]
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
  statuses = [{"status": {"conditions": [{"type": "Failed", "status": "True"}]}},
              {"status": {"conditions": [{"type": "Completed", "status": "True"}]}},
              {"status": {"replicatedJobsStatus": [{"name": "slice", "ready": 1}]}},
              {"spec": {"suspend": True}, "status": {}}]
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
  rows = {line.split()[0]: line.split()[1:] for line in status.stdout.splitlines()[1:-1]}
  names = [gke.jobset_name(p, r) for r in fts]
  assert [rows[r.id] for r in p.runs[:2]] == [["pretrain", "done"]] * 2
  assert [rows[r.id] for r in fts] == [["finetune", state, name] for state, name in
                                       zip(["failed", "failed", "running", "queued"], names)]
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
  assert re.fullmatch(r"run pt-d32l2-20-\w+ failed 2 times \(last on tiny-pt-d32l2-20-\w+\); gave up "
                      r"\(--retries=1\)\n", out.stderr)
  verbs = [c["argv"][0] for c in standins.calls(tmp_path)]
  assert verbs == ["get", "create", "create", "get", "delete", "create", "delete", "create", "get"]


def test_dry_run_prints_commands_and_manifests_and_touches_nothing(tmp_path):
  standins.install(tmp_path)
  workdir = tmp_path / "w"
  out = standins.launch(tmp_path, "gke", *_args(tmp_path, workdir, "--dry-run"))
  assert out.returncode == 0, out.stderr
  lines = out.stdout.splitlines()[1:]
  assert lines[0] == "kubectl get jobsets -l scaling/study=tiny -o json"
  assert lines[1::2] == ["kubectl create -f -"] * 2
  p = _plan(workdir)
  assert [json.loads(line) for line in lines[2::2]] == [gke.manifest(p, r, "img:1", 10, "") for r in p.runs[:2]]
  assert standins.calls(tmp_path) == [] and not workdir.exists()


@pytest.mark.parametrize("args, message", [
    (["--topology=v9-8"], "invalid launch: --topology='v9-8' is not a TPU slice"),
    (["--image="], "invalid launch: --image is missing; allowed: a container image"),
    (["--topology=v5e-16", "--config.mesh.shape.fsdp=1", "--config.mesh.shape.tensor=-1",
      "--config.pretrain.train.batch_size=6"],
     "invalid launch: pretrain.train.batch_size=6 does not divide across the 4 hosts of v5e-16")])
def test_bad_input_fails_in_one_line_before_kubectl(tmp_path, args, message):
  standins.install(tmp_path)
  out = standins.launch(tmp_path, "gke", *_args(tmp_path, tmp_path / "w"), *args)
  assert out.returncode == 1 and out.stderr.startswith(message) and out.stderr.count("\n") == 1, out.stderr
  assert standins.calls(tmp_path) == [] and not (tmp_path / "w").exists()
