"""What the pod launchers share: slices, a study validated for a slice, run states and the table."""

import os
import re
import subprocess
import sys

import pytest
import standins
from conftest import tiny_study

from launch import plan, slices
from scaling import results


def _load(workdir, topology="v5p-16", probe=False, **overrides):
  return plan.load(tiny_study(**{**standins.STUDY, **overrides}), topology, str(workdir), probe)


@pytest.mark.parametrize(
  "name, chips, hosts, topology",
  [
    ("v5p-8", 4, 1, "2x2x1"),
    ("v5p-32", 16, 4, "2x2x4"),
    ("v4-8", 4, 1, "2x2x1"),
    ("v4-32", 16, 4, "2x2x4"),
    ("v5e-1", 1, 1, "1x1"),
    ("v5e-8", 8, 1, "2x4"),
    ("v5e-16", 16, 4, "4x4"),
    ("v6e-8", 8, 1, "2x4"),
    ("v6e-64", 64, 16, "8x8"),
  ],
)
def test_slices_have_their_chips_hosts_and_topology(name, chips, hosts, topology):
  s = plan.tpu_slice(name)
  assert (s.chips, s.hosts, s.topology, s.chips_per_host) == (chips, hosts, topology, chips // hosts)


TENSOR_MESH = {"data": 1, "fsdp": 1, "tensor": -1}  # The batch is not split over devices: only hosts count.


@pytest.mark.parametrize(
  "topology, overrides, error, message",
  [
    ("v9-8", {}, slices.CheckError, "--topology='v9-8' is not a TPU slice; allowed: v4-N, v5p-N, v5e-N, v6e-N"),
    (
      "v5p-16",
      {"mesh.shape": {"data": 1, "fsdp": 4, "tensor": 1}},
      slices.CheckError,
      "mesh.shape={'data': 1, 'fsdp': 4, 'tensor': 1} uses 4 of the 8 devices of v5p-16; allowed: axes whose "
      "product is 8",
    ),
    (
      "v5e-16",
      {"mesh.shape": TENSOR_MESH, "pretrain.train.batch_size": 6},
      plan.PlanError,
      "pretrain.train.batch_size=6 does not divide across the 4 hosts of v5e-16; allowed: a multiple of 4",
    ),
    (
      "v5e-16",
      {"mesh.shape": TENSOR_MESH, "finetune.train.batch_size": 10},
      plan.PlanError,
      "finetune.train.batch_size=10 does not divide across the 4 hosts",
    ),
    (
      "v5e-16",
      {"mesh.shape": TENSOR_MESH, "eval.batch_size": 42},
      plan.PlanError,
      "eval.batch_size=42 does not divide across the 4 hosts of v5e-16",
    ),
  ],
)
def test_a_study_that_does_not_fit_the_slice_is_named(tmp_path, topology, overrides, error, message):
  with pytest.raises(error, match=re.escape(message)):
    _load(tmp_path / "w", topology, **overrides)


def test_the_workdir_probe_leaves_nothing_and_names_an_unreachable_workdir(tmp_path):
  _load(tmp_path / "w", probe=True)
  assert list((tmp_path / "w").iterdir()) == []
  (tmp_path / "file").write_text("not a directory")
  with pytest.raises(plan.PlanError, match=r"--workdir='.*/file/w' is not reachable: cannot write a file there"):
    _load(tmp_path / "file" / "w", probe=True)


def test_ready_runs_wait_for_their_dependencies_and_the_table_counts_states(tmp_path):
  p = _load(tmp_path)
  plan.write_plan(p.study, p.runs, p.workdir)
  pt0, pt1 = [r for r in p.runs if r.kind == "pretrain"]
  ft0, ft1 = [r for r in p.runs if r.kind == "finetune" and r.deps == (pt0.id,)]
  results.write_json(p.workdir / "runs" / pt0.id / results.RESULT, {"id": pt0.id})
  states = plan.run_states(
    p.runs,
    p.workdir,
    {pt1.id: ("running", "js-1"), ft0.id: ("failed", "js-2"), pt0.id: ("failed", "ignored: the run is done")},
  )
  assert [s.run.id for s in plan.ready(states)] == [ft0.id, ft1.id]  # Not the running base, nor its fine-tunes.
  rows = {line.split()[0]: line.split()[1:] for line in plan.format_status(states).splitlines()[1:-1]}
  assert rows[pt0.id] == ["pretrain", "done"] and rows[pt1.id] == ["pretrain", "running", "js-1"]
  assert rows[ft0.id] == ["finetune", "failed", "js-2"] and rows[ft1.id] == ["finetune", "missing"]
  assert plan.format_status(states).splitlines()[-1] == "10 runs: 1 done, 1 running, 0 queued, 1 failed, 7 missing"


def test_the_table_shows_how_far_each_run_that_is_not_done_got(tmp_path):
  p = _load(tmp_path)
  pt0, pt1 = [r for r in p.runs if r.kind == "pretrain"]
  ft0 = next(r for r in p.runs if r.kind == "finetune")
  eft = next(r for r in p.runs if r.kind == "eft")
  logs = {
    pt0.id: '{"loss": 2.5, "step": 10}\n',  # Done: its log is not read.
    pt1.id: '{"loss": 2.5, "step": 5}\n{"loss": 2.4, "step": 10}\n',
    # A dev loss, a later training line, then the half line of a process that is writing one.
    ft0.id: '{"dev_loss": 3.0, "step": 0}\n{"loss": 2.9, "step": 5}\n{"dev_loss": 1.23456, "step": 5}\n'
    '{"loss": 2.1, "step": 10}\n{"loss": 2.0, "st',
    eft.id: '{"test_loss": 1.5}\n',
  }  # Measurements without a step count: nothing to show.
  for run_id, text in logs.items():
    (p.workdir / "runs" / run_id).mkdir(parents=True)
    (p.workdir / "runs" / run_id / plan.METRICS).write_text(text)
  results.write_json(p.workdir / "runs" / pt0.id / results.RESULT, {"id": pt0.id})
  states = plan.run_states(p.runs, p.workdir, {ft0.id: ("running", "js-ft"), eft.id: ("queued", "a-longer-name")})
  lines = plan.format_status(states).splitlines()
  rows = {line.split()[0]: line for line in lines[1:-1]}
  column = lines[0].index("progress")
  assert lines[0].split() == ["run", "kind", "state", "engine", "progress"]
  assert rows[pt1.id][column:] == "step 10/20" and rows[pt1.id].split()[1:4] == ["pretrain", "missing", "step"]
  assert rows[ft0.id][column:] == "step 10/20, dev loss 1.235" and rows[ft0.id].split()[3] == "js-ft"
  # Runs with no progress to show: their rows as before, the engine object last.
  assert rows[pt0.id].split()[1:] == ["pretrain", "done"] and rows[eft.id].endswith("queued   a-longer-name")
  assert all(len(rows[r.id].split()) == 3 for r in p.runs if r.id not in (pt0.id, pt1.id, ft0.id, eft.id))
  # A table in which no run has progress to show (no log, or one without steps): the header as before.
  assert plan.format_status(plan.run_states(p.runs[4:], p.workdir, {})).splitlines()[0].split() == [
    "run",
    "kind",
    "state",
    "engine",
  ]


def test_retries_run_out_per_run():
  retries = plan.Retries(1)
  retries.spend("a", "js-a")
  retries.spend("b", "js-b")
  with pytest.raises(plan.LaunchError, match=r"run a failed 2 times \(last on js-a\); gave up \(--retries=1\)"):
    retries.spend("a", "js-a")


def test_commands_run_without_a_shell_and_fail_in_one_line(tmp_path, capsys):
  assert (
    plan.call([sys.executable, "-c", "import sys; print(sys.argv[1])", standins.HOSTILE], False)
    == standins.HOSTILE + "\n"
  )
  with pytest.raises(plan.LaunchError, match=r"failed \(exit 1\): boom$"):
    plan.call([sys.executable, "-c", "import sys; sys.exit('boom')"], False)
  with pytest.raises(plan.LaunchError, match="no-such-tool: not found on PATH"):
    plan.call(["no-such-tool"], False)
  assert plan.call(["kubectl", "create", "-f", "-"], True, stdin="{}") == ""
  assert capsys.readouterr().out == "kubectl create -f -\n{}\n"
  assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
  "text, limit, label",
  [
    (standins.HOSTILE, 63, "touch-pwned-rm-rf-x-echo-q"),
    ("123 Study", 63, "x-123-study"),
    ("A" * 80, 20, "a" * 20),
    ("ab--__--cd", 3, "ab"),
  ],
)
def test_dns_labels(text, limit, label):
  assert plan.dns_label(text, limit) == label


@pytest.mark.parametrize(
  "launcher, extra",
  [("tpu", ["--project", "p", "--zone", "z", "--package", "scaling[tpu]"]), ("gke", ["--image", "img:1"])],
)
def test_a_dry_run_on_a_gs_workdir_reaches_nothing(tmp_path, launcher, extra):
  blocked = tmp_path / "blocked" / "gcsfs"  # Any look at gs:// would need gcsfs: it fails instead.
  blocked.mkdir(parents=True)
  (blocked / "__init__.py").write_text("raise ImportError('a dry run looked at the workdir')\n")
  env = {k: v for k, v in os.environ.items() if not k.startswith(("STORAGE_EMULATOR", "TENSORSTORE"))}
  env["PYTHONPATH"] = os.pathsep.join([str(blocked.parent), standins.REPO])
  out = subprocess.run(
    [
      sys.executable,
      "-m",
      f"launch.{launcher}",
      "--config",
      "configs/pod_ladder.py",
      "--topology",
      "v5p-32",
      "--workdir",
      "gs://bucket/ladder",
      "--dry_run",
      *extra,
    ],
    cwd=standins.REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert out.returncode == 0, out.stderr
  lines = out.stdout.splitlines()
  assert "workdir gs://bucket/ladder (a dry run does not read it: every run shows as not done)" in lines[0]
  runs = [line for line in lines if "gs://bucket/ladder/runs/pt-" in line]
  assert len(runs) == 3  # The ladder's three bases are ready: the commands (or manifests) that run them.
