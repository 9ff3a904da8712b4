"""The TPU VM launcher against a recording gcloud: its commands, a pool of slices working through a
study in dependency order, preempted slices, a run that keeps failing, dry runs, bad input, status."""

import json
import os
import re
import shlex

import pytest
import standins
from conftest import tiny_study

from launch import plan, tpu

TOPOLOGY = "v5p-16"  # 8 chips on 2 hosts.
CLOUD = tpu.Cloud("p", "z", tpu.RUNTIMES["v5p"], "on-demand", "scaling[tpu]")


def _plan(workdir, topology=TOPOLOGY, **overrides) -> plan.Plan:
  return plan.load(tiny_study(**{**standins.STUDY, **overrides}), topology, str(workdir), probe=False)


def _args(tmp_path, workdir, *extra, package=CLOUD.package, **overrides):
  return ["--config", standins.write_config(tmp_path, **overrides), "--topology", TOPOLOGY,
          "--workdir", str(workdir), "--project", "p", "--zone", "z", "--package", package, "--poll_seconds=0.02",
          *extra]


def _runs_started(calls) -> list[tuple[int, str, str]]:
  """(call index, slice, run id) of every run started over ssh."""
  return [(i, c["argv"][4], os.path.basename(os.path.dirname(c["command"][4]))) for i, c in enumerate(calls)
          if c.get("command", [])[:3] == standins.RUN_PREFIX]


def _lifecycle(calls, name) -> list[str]:
  """What was done to a slice: create and delete, in order."""
  return [c["argv"][3] for c in calls if c.get("argv", [])[2:5] in (["queued-resources", "create", name],
                                                                    ["queued-resources", "delete", name])]


def test_gcloud_commands_name_the_slice_and_quote_the_remote_command(tmp_path):
  p = _plan(tmp_path / standins.HOSTILE, "v5e-16", **{"mesh.shape": {"data": 1, "fsdp": 1, "tensor": -1}})
  assert tpu.slice_names(p, 2) == ["tiny-0", "tiny-1"]
  where = ["--project", "p", "--zone", "z"]
  spot = tpu.Cloud("p", "z", tpu.RUNTIMES["v5e"], "spot", "scaling[tpu]")
  assert tpu.create_command(p, spot, "tiny-0") == [
      "gcloud", "compute", "tpus", "queued-resources", "create", "tiny-0", "--node-id", "tiny-0",
      "--accelerator-type", "v5litepod-16", "--runtime-version", "v2-alpha-tpuv5-lite", "--spot", *where]
  reserved = tpu.create_command(p, tpu.Cloud("p", "z", "v", "reserved", ""), "tiny-0")
  assert "--reserved" in reserved and "--spot" not in reserved
  assert not {"--spot", "--reserved"} & set(tpu.create_command(p, CLOUD, "tiny-0"))
  assert tpu.delete_command(CLOUD, "tiny-1") == ["gcloud", "compute", "tpus", "queued-resources", "delete", "tiny-1",
                                                 "--force", "--quiet", *where]
  argv = plan.host_command(p.workdir, p.runs[0])
  ssh = tpu.ssh_command(CLOUD, "tiny-0", argv)
  assert ssh[:8] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "tiny-0", "--worker=all", "--quiet"]
  assert ssh[8].startswith("--command=") and shlex.split(ssh[8][len("--command="):]) == argv
  assert argv[4] == f"{tmp_path}/{standins.HOSTILE}/runs/{p.runs[0].id}/spec.json"
  assert [tpu.slice_state(s) for s in ("ACTIVE", "WAITING_FOR_RESOURCES", None, "SUSPENDED", "FAILED")] == \
      ["running", "queued", "queued", "failed", "failed"]


def test_a_pool_of_three_slices_runs_the_study_in_dependency_order(tmp_path):
  standins.install(tmp_path)
  standins.set_state(tmp_path, {"run_seconds": 0.2})
  (tmp_path / "x").write_text("a shell's `rm -rf x` would delete this")
  workdir, package = tmp_path / standins.HOSTILE, f"scaling[tpu] @ git+https://example.com/{standins.HOSTILE}"
  out = standins.launch(tmp_path, "tpu", *_args(tmp_path, workdir, "--slices=3", "--capacity=spot", "--watch",
                                                package=package, name=standins.HOSTILE))
  assert out.returncode == 0, out.stderr
  assert "10 runs: 10 done, 0 running, 0 queued, 0 failed, 0 missing" in out.stdout
  p = _plan(workdir, name=standins.HOSTILE)
  cloud = tpu.Cloud("p", "z", tpu.RUNTIMES["v5p"], "spot", package)
  names = tpu.slice_names(p, 3)
  assert names[0] == "touch-pwned-rm-rf-x-echo-q-0"
  calls = standins.calls(tmp_path)
  assert [c["argv"] for c in calls if c.get("argv", [])[3:4] == ["create"]] == \
      [tpu.create_command(p, cloud, name)[1:] for name in names]
  assert [_lifecycle(calls, name) for name in names] == [["create", "delete"]] * 3  # Deleted when no run is left.
  assert standins.state(tmp_path)["queued_resources"] == {}

  started = _runs_started(calls)
  by_id = {r.id: r for r in p.runs}
  assert sorted(run_id for _, _, run_id in started) == sorted(by_id)  # Each run once, with its exact argv:
  assert all(calls[i]["command"] == plan.host_command(p.workdir, by_id[run_id]) for i, _, run_id in started)
  ended = {c["end"]: i for i, c in enumerate(calls) if "end" in c}
  assert all(ended[dep] < i for i, _, run_id in started for dep in by_id[run_id].deps)  # After their bases.
  assert started[1][0] < min(ended.values()) and {started[0][1], started[1][1]} == set(names[:2])  # In parallel.
  third = next(i for i, c in enumerate(calls) if c.get("argv", [])[3:5] == ["create", names[2]])
  assert third > min(ended.values())  # Made only once a fine-tune was ready for it.
  installs = [(i, c["argv"][4]) for i, c in enumerate(calls) if c.get("command", [])[:3] == ["python3", "-m", "pip"]]
  assert [calls[i]["command"] for i, _ in installs] == [tpu.install_command(package)] * 3
  assert all(i < min(j for j, name, _ in started if name == slice_name) for i, slice_name in installs)

  assert json.loads((workdir / tpu.POOL).read_text()) == {name: None for name in names}
  assert (tmp_path / "x").exists() and not list(tmp_path.rglob("PWNED"))
  assert not os.path.exists(os.path.join(standins.REPO, "PWNED"))


def test_a_preempted_slice_is_made_again_and_its_run_resumes(tmp_path):
  standins.install(tmp_path)
  workdir = tmp_path / "w"
  p = _plan(workdir)
  names, pt0 = tpu.slice_names(p, 2), p.runs[0]
  standins.set_state(tmp_path, {"queued_resources": {names[0]: "SUSPENDED", names[1]: "ACTIVE"},
                                "ssh": {pt0.id: ["preempt"]}})
  # --retries=0: a preemption is not a failure of the run.
  out = standins.launch(tmp_path, "tpu", *_args(tmp_path, workdir, "--slices=2", "--watch", "--retries=0"))
  assert out.returncode == 0, out.stderr
  calls = standins.calls(tmp_path)
  assert _lifecycle(calls, names[0]) == ["delete", "create", "delete", "create", "delete"]
  assert _lifecycle(calls, names[1]) == ["delete"]  # The healthy slice was used as it was, then deleted.
  started = [run_id for _, _, run_id in _runs_started(calls)]
  assert started.count(pt0.id) == 2 and len(started) == 11
  assert all((workdir / "runs" / r.id / "result.json").exists() for r in p.runs)


def test_a_run_that_keeps_failing_ends_the_launch_and_deletes_the_slices(tmp_path):
  standins.install(tmp_path)
  workdir = tmp_path / "w"
  p = _plan(workdir)
  pt1 = p.runs[1]
  standins.set_state(tmp_path, {"ssh": {pt1.id: ["fail", "fail"]}})
  out = standins.launch(tmp_path, "tpu", *_args(tmp_path, workdir, "--slices=2", "--watch", "--retries=1"))
  assert out.returncode == 1 and "Traceback" not in out.stderr
  assert re.fullmatch(rf"run {pt1.id} failed 2 times \(last on tiny-[01]\); gave up \(--retries=1\)\n", out.stderr)
  assert [run_id for _, _, run_id in _runs_started(standins.calls(tmp_path))].count(pt1.id) == 2
  assert standins.state(tmp_path)["queued_resources"] == {}
  assert json.loads((workdir / tpu.POOL).read_text()) == {"tiny-0": None, "tiny-1": None}


def test_dry_run_prints_every_command_and_touches_nothing(tmp_path):
  standins.install(tmp_path)
  workdir = tmp_path / "w"
  out = standins.launch(tmp_path, "tpu", *_args(tmp_path, workdir, "--slices=2", "--dry-run"))
  assert out.returncode == 0, out.stderr
  p = _plan(workdir)
  names, pts = tpu.slice_names(p, 2), p.runs[:2]
  expected = [tpu.gcloud(CLOUD, "queued-resources", "list", "--format=json"),
              *(tpu.create_command(p, CLOUD, name) for name in names)]
  for name, run in zip(names, pts):
    expected += [tpu.ssh_command(CLOUD, name, tpu.install_command(CLOUD.package)),
                 tpu.ssh_command(CLOUD, name, plan.host_command(p.workdir, run))]
  expected += [tpu.delete_command(CLOUD, name) for name in names]
  assert [shlex.split(line) for line in out.stdout.splitlines()[1:]] == expected
  assert standins.calls(tmp_path) == [] and not workdir.exists()


def test_status_shows_the_state_of_each_run_on_its_slice(tmp_path):
  standins.install(tmp_path)
  workdir = tmp_path / "w"
  p = _plan(workdir)
  plan.write_plan(p.study, p.runs, p.workdir)
  pt0, pt1 = p.runs[:2]
  ft0, ft1 = [r for r in p.runs if r.deps == (pt0.id,)]
  standins.write_result(str(workdir / "runs" / pt0.id / "spec.json"))
  names = tpu.slice_names(p, 3)
  (workdir / tpu.POOL).write_text(json.dumps(dict(zip(names, [ft0.id, pt1.id, ft1.id]))))
  standins.set_state(tmp_path, {"queued_resources": dict(zip(names, ["ACTIVE", "WAITING_FOR_RESOURCES",
                                                                      "SUSPENDED"]))})
  out = standins.launch(tmp_path, "tpu", "status", *_args(tmp_path, workdir))
  assert out.returncode == 0, out.stderr
  rows = {line.split()[0]: line.split()[1:] for line in out.stdout.splitlines()[1:-1]}
  assert rows[pt0.id] == ["pretrain", "done"] and rows[ft0.id] == ["finetune", "running", names[0]]
  assert rows[pt1.id] == ["pretrain", "queued", names[1]] and rows[ft1.id] == ["finetune", "failed", names[2]]
  assert out.stdout.splitlines()[-1] == "10 runs: 1 done, 1 running, 1 queued, 1 failed, 6 missing"
  assert [c["argv"][3] for c in standins.calls(tmp_path)] == ["list"]


@pytest.mark.parametrize("args, message", [
    (["--config.mesh.shape.fsdp=4"], "invalid launch: mesh.shape={'data': 1, 'fsdp': 4, 'tensor': 1} uses 4 of "
     "the 8 devices of v5p-16"),
    (["--workdir", "file/w"], "invalid launch: --workdir='file/w' is not reachable: cannot write a file there"),
    (["--project="], "invalid launch: --project is missing; allowed: your Google Cloud project")])
def test_bad_input_fails_in_one_line_before_gcloud(tmp_path, args, message):
  standins.install(tmp_path)
  (tmp_path / "file").write_text("a file, not a directory")
  out = standins.launch(tmp_path, "tpu", *_args(tmp_path, tmp_path / "w"), *args)
  assert out.returncode == 1 and out.stderr.startswith(message) and out.stderr.count("\n") == 1, out.stderr
  assert standins.calls(tmp_path) == [] and not (tmp_path / "w").exists()
