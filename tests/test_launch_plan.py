"""What the pod launchers share: slices, a study validated for a slice, run states and the table."""

import re
import sys

import pytest
import standins
from conftest import tiny_study

from launch import plan, slices
from scaling import results


def _load(workdir, topology="v5p-16", probe=False, **overrides):
  return plan.load(tiny_study(**{**standins.STUDY, **overrides}), topology, str(workdir), probe)


@pytest.mark.parametrize("name, chips, hosts, topology", [
    ("v5p-8", 4, 1, "2x2x1"), ("v5p-32", 16, 4, "2x2x4"), ("v4-8", 4, 1, "2x2x1"), ("v4-32", 16, 4, "2x2x4"),
    ("v5e-1", 1, 1, "1x1"), ("v5e-8", 8, 1, "2x4"), ("v5e-16", 16, 4, "4x4"), ("v6e-8", 8, 1, "2x4"),
    ("v6e-64", 64, 16, "8x8")])
def test_slices_have_their_chips_hosts_and_topology(name, chips, hosts, topology):
  s = plan.tpu_slice(name)
  assert (s.chips, s.hosts, s.topology, s.chips_per_host) == (chips, hosts, topology, chips // hosts)


TENSOR_MESH = {"data": 1, "fsdp": 1, "tensor": -1}  # The batch is not split over devices: only hosts count.


@pytest.mark.parametrize("topology, overrides, error, message", [
    ("v9-8", {}, slices.CheckError, "--topology='v9-8' is not a TPU slice; allowed: v4-N, v5p-N, v5e-N, v6e-N"),
    ("v5p-16", {"mesh.shape": {"data": 1, "fsdp": 4, "tensor": 1}}, slices.CheckError,
     "mesh.shape={'data': 1, 'fsdp': 4, 'tensor': 1} uses 4 of the 8 devices of v5p-16; allowed: axes whose "
     "product is 8"),
    ("v5e-16", {"mesh.shape": TENSOR_MESH, "pretrain.train.batch_size": 6}, plan.PlanError,
     "pretrain.train.batch_size=6 does not divide across the 4 hosts of v5e-16; allowed: a multiple of 4"),
    ("v5e-16", {"mesh.shape": TENSOR_MESH, "finetune.train.batch_size": 10}, plan.PlanError,
     "finetune.train.batch_size=10 does not divide across the 4 hosts"),
    ("v5e-16", {"mesh.shape": TENSOR_MESH, "eval.batch_size": 42}, plan.PlanError,
     "eval.batch_size=42 does not divide across the 4 hosts of v5e-16")])
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
  states = plan.run_states(p.runs, p.workdir, {pt1.id: ("running", "js-1"), ft0.id: ("failed", "js-2"),
                                                pt0.id: ("failed", "ignored: the run is done")})
  assert [s.run.id for s in plan.ready(states)] == [ft0.id, ft1.id]  # Not the running base, nor its fine-tunes.
  rows = {line.split()[0]: line.split()[1:] for line in plan.format_status(states).splitlines()[1:-1]}
  assert rows[pt0.id] == ["pretrain", "done"] and rows[pt1.id] == ["pretrain", "running", "js-1"]
  assert rows[ft0.id] == ["finetune", "failed", "js-2"] and rows[ft1.id] == ["finetune", "missing"]
  assert plan.format_status(states).splitlines()[-1] == "10 runs: 1 done, 1 running, 0 queued, 1 failed, 7 missing"


def test_retries_run_out_per_run():
  retries = plan.Retries(1)
  retries.spend("a", "js-a")
  retries.spend("b", "js-b")
  with pytest.raises(plan.LaunchError, match=r"run a failed 2 times \(last on js-a\); gave up \(--retries=1\)"):
    retries.spend("a", "js-a")


def test_commands_run_without_a_shell_and_fail_in_one_line(tmp_path, capsys):
  assert plan.call([sys.executable, "-c", "import sys; print(sys.argv[1])", standins.HOSTILE], False) == \
      standins.HOSTILE + "\n"
  with pytest.raises(plan.LaunchError, match=r"failed \(exit 1\): boom$"):
    plan.call([sys.executable, "-c", "import sys; sys.exit('boom')"], False)
  with pytest.raises(plan.LaunchError, match="no-such-tool: not found on PATH"):
    plan.call(["no-such-tool"], False)
  assert plan.call(["kubectl", "create", "-f", "-"], True, stdin="{}") == ""
  assert capsys.readouterr().out == "kubectl create -f -\n{}\n"
  assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("text, limit, label", [
    (standins.HOSTILE, 63, "touch-pwned-rm-rf-x-echo-q"), ("123 Study", 63, "x-123-study"),
    ("A" * 80, 20, "a" * 20), ("ab--__--cd", 3, "ab")])
def test_dns_labels(text, limit, label):
  assert plan.dns_label(text, limit) == label
