"""The TPU VM launcher against a recording gcloud: its commands (and the real gcloud's parser on
them), slice names, the install on every host, a pool of slices working through a study in
dependency order, preempted slices, a run that keeps failing, Ctrl-C and the launch that resumes,
dry runs, bad input, status."""

import contextlib
import dataclasses
import io
import json
import os
import pathlib
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib

import pytest
import standins
from conftest import tiny_study
from packaging import specifiers

from launch import plan, tpu

REPO = pathlib.Path(standins.REPO)
GCLOUD = shutil.which("gcloud")
# How gcloud's parser rejects a command (exit 2): a flag it does not know, a bad or missing value.
PARSE_ERROR = re.compile(r"unrecognized arguments|argument \S+: invalid|ERROR: \(gcloud[\w.-]*\) argument")
NO_ACCOUNT = "You do not currently have an active account selected"  # Where a parsed command stops offline.
TOPOLOGY = "v5p-16"  # 8 chips on 2 hosts.
CLOUD = tpu.Cloud("p", "z", tpu.RUNTIMES["v5p"], "on-demand", "scaling[tpu]")


def _plan(workdir, topology=TOPOLOGY, **overrides) -> plan.Plan:
  return plan.load(tiny_study(**{**standins.STUDY, **overrides}), topology, str(workdir), probe=False)


def _args(tmp_path, workdir, *extra, package=CLOUD.package, **overrides):
  return [
    "--config",
    standins.write_config(tmp_path, **overrides),
    "--topology",
    TOPOLOGY,
    "--workdir",
    str(workdir),
    "--project",
    "p",
    "--zone",
    "z",
    "--package",
    package,
    "--poll_seconds=0.02",
    *extra,
  ]


def _runs_started(calls) -> list[tuple[int, str, str]]:
  """(call index, slice, run id) of every run started over ssh."""
  return [
    (i, c["argv"][4], os.path.basename(os.path.dirname(c["command"][4])))
    for i, c in enumerate(calls)
    if standins.is_run(c.get("command", []))
  ]


def _lifecycle(calls, name) -> list[str]:
  """What was done to a slice: create and delete, in order."""
  return [
    c["argv"][3]
    for c in calls
    if c.get("argv", [])[2:5] in (["queued-resources", "create", name], ["queued-resources", "delete", name])
  ]


def test_gcloud_commands_name_the_slice_and_quote_the_remote_command(tmp_path):
  p = _plan(tmp_path / standins.HOSTILE, "v5e-16", **{"mesh.shape": {"data": 1, "fsdp": 1, "tensor": -1}})
  first, second = tpu.slice_names(p, 2)
  assert re.fullmatch(r"tiny-[0-9a-f]{6}-0", first) and second == f"{first[:-1]}1"
  where = ["--project", "p", "--zone", "z"]
  spot = tpu.Cloud("p", "z", tpu.RUNTIMES["v5e"], "spot", "scaling[tpu]")
  assert tpu.create_command(p, spot, first) == [
    "gcloud",
    "compute",
    "tpus",
    "queued-resources",
    "create",
    first,
    "--node-id",
    first,
    "--accelerator-type",
    "v5litepod-16",
    "--runtime-version",
    "v2-alpha-tpuv5-lite",
    "--spot",
    *where,
  ]
  reserved = tpu.create_command(p, tpu.Cloud("p", "z", "v", "reserved", ""), first)
  assert "--reserved" in reserved and "--spot" not in reserved
  assert not {"--spot", "--reserved"} & set(tpu.create_command(p, CLOUD, first))
  assert tpu.delete_command(CLOUD, second) == [
    "gcloud",
    "compute",
    "tpus",
    "queued-resources",
    "delete",
    second,
    "--force",
    "--quiet",
    *where,
  ]
  argv = plan.host_command(p.workdir, p.runs[0], python=tpu.VENV_PYTHON)
  ssh = tpu.ssh_command(CLOUD, first, argv)
  assert ssh[:8] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", first, "--worker=all", "--quiet"]
  assert ssh[8].startswith("--command=") and shlex.split(ssh[8][len("--command=") :]) == argv
  assert argv[4] == f"{tmp_path}/{standins.HOSTILE}/runs/{p.runs[0].id}/spec.json"
  steps = tpu.install_command(standins.HOSTILE)
  install = tpu.ssh_command(CLOUD, first, *steps)
  assert install[:8] == ssh[:8] and install[9:] == ssh[9:]
  assert shlex.split(install[8][len("--command=") :]) == [*steps[0], "&&", *steps[1], "&&", *steps[2], "&&", *steps[3]]
  assert [tpu.slice_state(s) for s in ("ACTIVE", "WAITING_FOR_RESOURCES", None, "SUSPENDED", "FAILED")] == [
    "running",
    "queued",
    "queued",
    "failed",
    "failed",
  ]


def test_slice_names_are_node_names_of_their_study_and_workdir(tmp_path):
  names = tpu.slice_names(_plan(tmp_path / "a"), 2)
  assert tpu.slice_names(_plan(tmp_path / "a"), 2) == names  # The next launch finds its slices.
  assert not set(tpu.slice_names(_plan(tmp_path / "b"), 2)) & set(names)  # Another workdir: other slices.
  long = tpu.slice_names(_plan(tmp_path / "a", name=f"9 {standins.HOSTILE} " * 8), 12)
  assert long[:2] == tpu.slice_names(_plan(tmp_path / "a", name=f"9 {standins.HOSTILE} " * 8), 2)
  # What Cloud TPU takes for a node name (--node-id; queued resource names take more).
  assert all(re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", n) and len(n) <= 63 for n in [*names, *long]), long
  assert len(long[0]) == 58  # The prefix is cut to 56, leaving room for '-<i>' up to a million slices.


def test_every_host_installs_a_python_that_the_project_supports(tmp_path):
  uv_version = re.search(r"^UV_VERSION := (\S+)$", (REPO / "Makefile").read_text(), re.MULTILINE)[1]
  requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
  assert tpu.PYTHON_VERSION in specifiers.SpecifierSet(requires) and tpu.VENV_PYTHON == f"{tpu.VENV}/bin/python"
  uv = ["python3", "-m", "uv"]  # The image's python3 (3.10 on Cloud TPU VM images) runs only uv.
  steps = tpu.install_command(standins.HOSTILE)
  assert steps == [
    ["python3", "-m", "pip", "install", "--user", "--quiet", f"uv=={uv_version}"],
    [*uv, "python", "install", "--quiet", tpu.PYTHON_VERSION],
    [*uv, "venv", "--quiet", "--python", tpu.PYTHON_VERSION, "--managed-python", "--allow-existing", tpu.VENV],
    [*uv, "pip", "install", "--quiet", "--python", tpu.VENV_PYTHON, standins.HOSTILE],
  ]
  # The remote shell gets the steps as one line: it runs each argument list as it is, and nothing else.
  bin_dir, log = tmp_path / "bin", tmp_path / "argv.jsonl"
  bin_dir.mkdir()
  (bin_dir / "python3").write_text(
    f"#!{sys.executable}\nimport json, sys\nopen({str(log)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
  )
  (bin_dir / "python3").chmod(0o755)
  (tmp_path / "x").write_text("a shell's `rm -rf x` would delete this")
  line = tpu.ssh_command(CLOUD, "s", *steps)[8][len("--command=") :]
  subprocess.run(["bash", "-c", line], cwd=tmp_path, env={"PATH": f"{bin_dir}{os.pathsep}/usr/bin:/bin"}, check=True)
  assert [json.loads(entry) for entry in log.read_text().splitlines()] == [step[1:] for step in steps]
  assert (tmp_path / "x").exists() and not list(tmp_path.rglob("PWNED"))


def _launcher_commands(p: plan.Plan) -> dict[str, list[str]]:
  """Every distinct gcloud command that launch.tpu builds, by what it does, made by its own functions."""
  name = tpu.slice_names(p, 1)[0]
  cloud = dataclasses.replace(CLOUD, package=f"scaling[tpu] @ git+https://example.com/{standins.HOSTILE}")
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    tpu.queued_resources(cloud, dry_run=True)  # Prints the command that it runs.
  commands = {"list": shlex.split(printed.getvalue())}
  for capacity in tpu.CAPACITY:
    commands[f"create {capacity}"] = tpu.create_command(p, dataclasses.replace(cloud, capacity=capacity), name)
  commands["delete"] = tpu.delete_command(cloud, name)
  commands["ssh install"] = tpu.ssh_command(cloud, name, *tpu.install_command(cloud.package))
  commands["ssh run"] = tpu.ssh_command(cloud, name, plan.host_command(p.workdir, p.runs[0], python=tpu.VENV_PYTHON))
  return commands


def _misspelt(argv: list[str]) -> tuple[list[str], str]:
  """The command with its first flag misspelt (--node-id: --node-idd), and that flag as it now reads."""
  i = next(i for i, arg in enumerate(argv) if arg.startswith("--"))
  flag, value = (argv[i].split("=", 1) + [None])[:2]
  wrong = f"{flag}{flag[-1]}" + (f"={value}" if value is not None else "")
  return [*argv[:i], wrong, *argv[i + 1 :]], wrong


@pytest.fixture(scope="module")
def gcloud_answers(tmp_path_factory) -> dict[str, tuple[list[str], int, str]]:
  """What the real gcloud answers (exit code, stderr) to each command that launch.tpu builds, and to each
  with a flag misspelt ("... misspelt"), all at once: each call takes about a second."""
  root = tmp_path_factory.mktemp("gcloud")
  commands = _launcher_commands(_plan(root / standins.HOSTILE))
  # A flag of each form, `--node-id NAME` and `--worker=all`: each misspelt call costs a second more.
  commands |= {f"{what} misspelt": _misspelt(commands[what])[0] for what in ("create spot", "ssh run")}
  config = root / "config"  # Empty: no account, so that no command gets past its parsing to the network.
  config.mkdir()
  # gcloud's cache of "not on Google Compute Engine": without it, every call asks metadata.google.internal.
  (config / "gce").write_text("False")
  env = {k: v for k, v in os.environ.items() if not k.startswith(("CLOUDSDK_", "GOOGLE_")) or k == "CLOUDSDK_PYTHON"}
  env |= {
    "HOME": str(root),
    "CLOUDSDK_CONFIG": str(config),
    "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
    "CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK": "1",
    "CLOUDSDK_CORE_DISABLE_USAGE_REPORTING": "true",
  }
  procs = {
    what: subprocess.Popen(
      [GCLOUD, *argv[1:]],
      env=env,
      cwd=root,
      stdin=subprocess.DEVNULL,
      stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE,
      text=True,
    )
    for what, argv in commands.items()
  }
  answers = {}
  for what, proc in procs.items():
    err = proc.communicate(timeout=120)[1]
    answers[what] = (commands[what], proc.returncode, err)
  return answers


@pytest.mark.skipif(GCLOUD is None, reason="the Google Cloud CLI (gcloud) is not on PATH")
def test_the_real_gcloud_parses_every_command_that_the_launcher_builds(gcloud_answers):
  answers = {what: answer for what, answer in gcloud_answers.items() if not what.endswith(" misspelt")}
  assert sorted(answers) == [
    "create on-demand",
    "create reserved",
    "create spot",
    "delete",
    "list",
    "ssh install",
    "ssh run",
  ]
  for what, (argv, code, err) in answers.items():
    assert code != 2 and not PARSE_ERROR.search(err), f"{what}: {shlex.join(argv)}\n{err}"
    assert code == 1 and NO_ACCOUNT in err, f"{what}: {shlex.join(argv)}\n{err}"  # Parsed, then stopped offline.


@pytest.mark.skipif(GCLOUD is None, reason="the Google Cloud CLI (gcloud) is not on PATH")
def test_the_real_gcloud_check_fails_a_misspelt_flag(gcloud_answers):
  answers = {what: answer for what, answer in gcloud_answers.items() if what.endswith(" misspelt")}
  assert sorted(answers) == ["create spot misspelt", "ssh run misspelt"]
  for what, (argv, code, err) in answers.items():
    wrong = _misspelt(gcloud_answers[what.removesuffix(" misspelt")][0])[1]
    assert code == 2 and PARSE_ERROR.search(err), f"{what}: {shlex.join(argv)}\n{err}"
    assert re.search(rf"unrecognized arguments:\s+{re.escape(wrong)}", err), err


def test_a_pool_of_three_slices_runs_the_study_in_dependency_order(tmp_path):
  standins.install(tmp_path)
  standins.set_state(tmp_path, {"run_seconds": 0.2})
  (tmp_path / "x").write_text("a shell's `rm -rf x` would delete this")
  workdir, package = tmp_path / standins.HOSTILE, f"scaling[tpu] @ git+https://example.com/{standins.HOSTILE}"
  out = standins.launch(
    tmp_path,
    "tpu",
    *_args(tmp_path, workdir, "--slices=3", "--capacity=spot", "--watch", package=package, name=standins.HOSTILE),
  )
  assert out.returncode == 0, out.stderr
  assert "10 runs: 10 done, 0 running, 0 queued, 0 failed, 0 missing" in out.stdout
  p = _plan(workdir, name=standins.HOSTILE)
  cloud = tpu.Cloud("p", "z", tpu.RUNTIMES["v5p"], "spot", package)
  names = tpu.slice_names(p, 3)
  assert re.fullmatch(r"touch-pwned-rm-rf-x-echo-q-[0-9a-f]{6}-0", names[0])
  calls = standins.calls(tmp_path)
  assert [c["argv"] for c in calls if c.get("argv", [])[3:4] == ["create"]] == [
    tpu.create_command(p, cloud, name)[1:] for name in names
  ]
  assert [_lifecycle(calls, name) for name in names] == [["create", "delete"]] * 3  # Deleted when no run is left.
  assert standins.state(tmp_path)["queued_resources"] == {}

  started = _runs_started(calls)
  by_id = {r.id: r for r in p.runs}
  assert sorted(run_id for _, _, run_id in started) == sorted(by_id)  # Each run once, with its exact argv:
  assert all(
    calls[i]["argv"]
    == tpu.ssh_command(cloud, name, plan.host_command(p.workdir, by_id[run_id], python=tpu.VENV_PYTHON))[1:]
    for i, name, run_id in started
  )
  ended = {c["end"]: i for i, c in enumerate(calls) if "end" in c}
  assert all(ended[dep] < i for i, _, run_id in started for dep in by_id[run_id].deps)  # After their bases.
  assert started[1][0] < min(ended.values()) and {started[0][1], started[1][1]} == set(names[:2])  # In parallel.
  third = next(i for i, c in enumerate(calls) if c.get("argv", [])[3:5] == ["create", names[2]])
  assert third > min(ended.values())  # Made only once a fine-tune was ready for it.
  installs = [(i, c["argv"][4]) for i, c in enumerate(calls) if c.get("command") and not standins.is_run(c["command"])]
  assert [calls[i]["argv"] for i, _ in installs] == [
    tpu.ssh_command(cloud, name, *tpu.install_command(package))[1:] for _, name in installs
  ]
  assert sorted(name for _, name in installs) == names
  assert all(i < min(j for j, name, _ in started if name == slice_name) for i, slice_name in installs)

  assert json.loads((workdir / tpu.POOL).read_text()) == {name: None for name in names}
  assert (tmp_path / "x").exists() and not list(tmp_path.rglob("PWNED"))
  assert not os.path.exists(os.path.join(standins.REPO, "PWNED"))


def test_a_preempted_slice_is_made_again_and_its_run_resumes(tmp_path):
  standins.install(tmp_path)
  workdir = tmp_path / "w"
  p = _plan(workdir)
  names, pt0 = tpu.slice_names(p, 2), p.runs[0]
  standins.set_state(
    tmp_path, {"queued_resources": {names[0]: "SUSPENDED", names[1]: "ACTIVE"}, "ssh": {pt0.id: ["preempt"]}}
  )
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
  names = tpu.slice_names(p, 2)
  assert re.fullmatch(
    rf"run {pt1.id} failed 2 times \(last on ({'|'.join(names)})\); gave up \(--retries=1\)\n", out.stderr
  )
  assert [run_id for _, _, run_id in _runs_started(standins.calls(tmp_path))].count(pt1.id) == 2
  assert standins.state(tmp_path)["queued_resources"] == {}
  assert json.loads((workdir / tpu.POOL).read_text()) == {name: None for name in names}


@pytest.mark.slow
def test_ctrl_c_says_in_one_line_how_to_resume_and_the_same_command_does(tmp_path):
  standins.install(tmp_path)
  standins.set_state(tmp_path, {"run_seconds": 0.5})
  workdir = tmp_path / "w"
  args = _args(tmp_path, workdir, "--slices=4", "--watch")
  env = {**os.environ, "PYTHONPATH": standins.REPO, "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}"}
  # Its own process, not the process server's child, to get the signal. It runs the launcher as `python -m`
  # does, once it has Python's SIGINT handler: Python sets it only where SIGINT was not ignored at its start,
  # and a shell without job control ignores SIGINT in its background jobs (such as a test run in one).
  command = [
    sys.executable,
    "-c",
    (
      "import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
      "runpy.run_module('launch.tpu', run_name='__main__', alter_sys=True)"
    ),
    *args,
  ]
  with open(tmp_path / "stdout", "w") as out, open(tmp_path / "stderr", "w") as err:
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
  try:
    deadline = time.monotonic() + 60
    calls = tmp_path / "calls.jsonl"
    # A run has started: the raw log, whose last line may be still being written.
    while not (calls.exists() and '"scaling.run"' in calls.read_text()):
      assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "stderr").read_text()
      time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    code = proc.wait(timeout=30)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  stderr = (tmp_path / "stderr").read_text()
  line = f"interrupted; the same command resumes: {shlex.join(['python', '-m', 'launch.tpu', *args])}\n"
  assert code == 130 and stderr in (line, f"\n{line}"), (code, stderr, (tmp_path / "stdout").read_text())
  p = _plan(workdir)
  names = tpu.slice_names(p, 4)
  held = {name: run_id for name, run_id in json.loads((workdir / tpu.POOL).read_text()).items() if run_id}
  assert held and set(held) <= set(standins.state(tmp_path)["queued_resources"])  # Left, with their runs.

  again = standins.launch(tmp_path, "tpu", *args)
  assert again.returncode == 0, again.stderr
  assert "10 runs: 10 done, 0 running, 0 queued, 0 failed, 0 missing" in again.stdout
  assert all((workdir / "runs" / r.id / "result.json").exists() for r in p.runs)
  calls = standins.calls(tmp_path)
  assert [_lifecycle(calls, name) for name in names] == [["create", "delete"]] * 4  # The slices left were used.


def test_dry_run_prints_every_command_and_touches_nothing(tmp_path):
  standins.install(tmp_path)
  workdir = tmp_path / "w"
  out = standins.launch(tmp_path, "tpu", *_args(tmp_path, workdir, "--slices=2", "--dry-run"))
  assert out.returncode == 0, out.stderr
  p = _plan(workdir)
  names, pts = tpu.slice_names(p, 2), p.runs[:2]
  expected = [
    tpu.gcloud(CLOUD, "queued-resources", "list", "--format=json"),
    *(tpu.create_command(p, CLOUD, name) for name in names),
  ]
  for name, run in zip(names, pts):
    expected += [
      tpu.ssh_command(CLOUD, name, *tpu.install_command(CLOUD.package)),
      tpu.ssh_command(CLOUD, name, plan.host_command(p.workdir, run, python=tpu.VENV_PYTHON)),
    ]
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
  standins.set_state(tmp_path, {"queued_resources": dict(zip(names, ["ACTIVE", "WAITING_FOR_RESOURCES", "SUSPENDED"]))})
  out = standins.launch(tmp_path, "tpu", "status", *_args(tmp_path, workdir))
  assert out.returncode == 0, out.stderr
  rows = {line.split()[0]: line.split()[1:] for line in out.stdout.splitlines()[1:-1]}
  assert rows[pt0.id] == ["pretrain", "done"] and rows[ft0.id] == ["finetune", "running", names[0]]
  assert rows[pt1.id] == ["pretrain", "queued", names[1]] and rows[ft1.id] == ["finetune", "failed", names[2]]
  assert out.stdout.splitlines()[-1] == "10 runs: 1 done, 1 running, 1 queued, 1 failed, 6 missing"
  assert [c["argv"][3] for c in standins.calls(tmp_path)] == ["list"]


@pytest.mark.parametrize(
  "args, message",
  [
    (
      ["--config.mesh.shape.fsdp=4"],
      "invalid launch: mesh.shape={'data': 1, 'fsdp': 4, 'tensor': 1} uses 4 of the 8 devices of v5p-16",
    ),
    (["--workdir", "file/w"], "invalid launch: --workdir='file/w' is not reachable: cannot write a file there"),
    (["--project="], "invalid launch: --project is missing; allowed: your Google Cloud project"),
  ],
)
def test_bad_input_fails_in_one_line_before_gcloud(tmp_path, args, message):
  standins.install(tmp_path)
  (tmp_path / "file").write_text("a file, not a directory")
  out = standins.launch(tmp_path, "tpu", *_args(tmp_path, tmp_path / "w"), *args)
  assert out.returncode == 1 and out.stderr.startswith(message) and out.stderr.count("\n") == 1, out.stderr
  assert standins.calls(tmp_path) == [] and not (tmp_path / "w").exists()
