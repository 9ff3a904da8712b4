"""A run's metric records go to TensorBoard event files (and W&B where a study asks), which hold
what its metrics.jsonl holds, each step once, after a resume too."""

import importlib.machinery
import json
import sys
import types

import numpy as np
import pytest
from conftest import tiny_study
from etils import epath
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.hparams import plugin_data_pb2
from tensorboardX import record_writer

from launch import local
from scaling import grid, kinds, metric_writers, train
from scaling import study as study_lib

# The charts of metrics.jsonl's keys.
TAGS = {"loss": "train/loss", "grad_norm": "train/grad_norm", "tokens": "train/tokens", "dev_loss": "dev/loss"}


def events(run_dir) -> dict[str, list[tuple[int, float]]]:
  """A run's scalars as TensorBoard reads them: (step, value) per tag, in order."""
  logdir = epath.Path(run_dir) / "tensorboard"
  assert len(list(logdir.glob("events.out.tfevents.*"))) == 1  # One curve per run.
  # All scalars (0), and steps written twice kept, not purged as TensorBoard's restart logic would.
  acc = event_accumulator.EventAccumulator(
    str(logdir), size_guidance={event_accumulator.SCALARS: 0}, purge_orphaned_data=False
  )
  acc.Reload()
  return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def logged(run_dir) -> dict[str, list[tuple[int, float]]]:
  """metrics.jsonl's records as the same scalars, at the event files' float32 precision."""
  out: dict[str, list[tuple[int, float]]] = {}
  for line in (epath.Path(run_dir) / "metrics.jsonl").read_text().splitlines():
    record = json.loads(line)
    for key, value in record.items():
      if key != "step":
        out.setdefault(TAGS[key], []).append((record["step"], float(np.float32(value))))
  return out


def assert_events_match_metrics(run_dir) -> None:
  """The run's event files hold exactly the steps and values of its metrics.jsonl."""
  expected = logged(run_dir)
  assert expected and events(run_dir) == expected


def _records(steps):
  """Records as a fine-tune writes them: dev loss at every step, training metrics after step 0."""
  for step in steps:
    if step:
      yield {"step": step, "loss": 2.0 / step, "grad_norm": 0.1 * step, "tokens": 64.0}
    yield {"step": step, "dev_loss": 3.0 - step / 3}


def _finetune_dir(workdir, **overrides) -> epath.Path:
  """The run dir of a tiny study's first fine-tune, planned (its spec.json written), not run."""
  study = study_lib.validate(
    tiny_study(**{"finetune.methods": ({"name": "lora", "rank": 4, "learning_rate": 0.01},), **overrides}), 8
  )
  runs = kinds.expand(study)
  local.write_plan(study, runs, workdir)
  return epath.Path(workdir) / "runs" / next(r.id for r in runs if r.kind == "finetune")


def test_event_files_hold_the_records_and_the_run_hparams(tmp_path):
  run_dir = _finetune_dir(tmp_path)
  log = train.MetricsLog(run_dir, None, True)
  for record in _records(range(0, 31, 5)):
    log.write(record)
  assert_events_match_metrics(run_dir)  # Before closing: each write is flushed.
  log.close()
  assert_events_match_metrics(run_dir)
  acc = event_accumulator.EventAccumulator(str(run_dir / "tensorboard"))
  acc.Reload()
  start = plugin_data_pb2.HParamsPluginData.FromString(
    acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
  ).session_start_info
  values = {k: v.string_value or v.number_value for k, v in start.hparams.items()}
  base = json.loads((run_dir / "spec.json").read_text())["config"]["base"]
  assert values == {
    "kind": "finetune",
    "size": "d32l2",
    "base": base,
    "task": "qa",
    "method": "lora-lr0.01-rank4",
    "d_f": 16,
    "seed": 0,
    "learning_rate": 0.01,
    "max_steps": 20,
  }


def test_a_resumed_log_starts_its_event_file_again_from_the_kept_lines(tmp_path):
  run_dir = _finetune_dir(tmp_path)
  killed = train.MetricsLog(run_dir, None, True)  # Killed after step 30, its last checkpoint at step 20.
  for record in _records(range(0, 31, 5)):
    killed.write(record)
  resumed = train.MetricsLog(run_dir, 20, True)
  assert max(step for values in events(run_dir).values() for step, _ in values) == 20
  assert_events_match_metrics(run_dir)
  for record in _records(range(25, 41, 5)):
    resumed.write(record)
  resumed.close()
  assert_events_match_metrics(run_dir)
  assert [step for step, _ in events(run_dir)["dev/loss"]] == list(range(0, 41, 5))  # Each step once.


def test_object_files_are_rewritten_whole_at_each_flush(tmp_path):
  """What gs:// event files are written through, here on a local path: flushed writes land, as one
  object, and unflushed ones wait."""
  assert isinstance(record_writer.REGISTERED_FACTORIES["gs"], metric_writers.ObjectFiles)
  path = tmp_path / "object"
  f = metric_writers.ObjectFiles().open(str(path))
  f.write(b"ab")
  f.flush()
  f.write(b"cd")
  assert path.read_bytes() == b"ab"
  f.close()
  assert path.read_bytes() == b"abcd"


def local_copy(run_dir: epath.Path, to: epath.Path) -> epath.Path:
  """A gs:// run dir's metrics.jsonl and event files, copied to a local folder that TensorBoard reads."""
  (to / "tensorboard").mkdir(parents=True)
  for path in (run_dir / "metrics.jsonl", *(run_dir / "tensorboard").iterdir()):
    (to / path.relative_to(run_dir)).write_bytes(path.read_bytes())
  return to


def test_a_gs_run_dir_holds_its_records_in_one_event_file(storage, tmp_path):
  run_dir = epath.Path(storage.workdir()) / "runs" / "ft-x"
  killed = train.MetricsLog(run_dir, None, True)
  for record in _records(range(0, 21, 5)):
    killed.write(record)
  assert_events_match_metrics(local_copy(run_dir, epath.Path(tmp_path) / "written"))  # Flushed as written.
  resumed = train.MetricsLog(run_dir, 10, True)
  for record in _records(range(15, 31, 5)):
    resumed.write(record)
  resumed.close()
  assert_events_match_metrics(local_copy(run_dir, epath.Path(tmp_path) / "resumed"))
  steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
  assert steps == [0, 5, 5, 10, 10, 15, 15, 20, 20, 25, 25, 30, 30]  # Appended to, though objects cannot be.


def test_hparams_of_a_pretraining_run():
  spec = {
    "kind": "pretrain",
    "size": "d16l2",
    "seed": 0,
    "world": {},
    "block": {},
    "train": {"learning_rate": 3e-3, "max_steps": 1200},
  }
  assert metric_writers.hparams(spec) == {
    "kind": "pretrain",
    "size": "d16l2",
    "seed": 0,
    "learning_rate": 3e-3,
    "max_steps": 1200,
  }


class FakeWandb(types.ModuleType):
  """wandb as the W&B server sees it: each run id's history, a resumed run starting after it."""

  def __init__(self):
    super().__init__("wandb")
    self.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
    self.inits, self.history, self.finished = [], {}, []

  def init(self, **kwargs):
    self.inits.append(kwargs)
    return FakeRun(self, kwargs["id"])


class FakeRun:
  """A W&B run of FakeWandb: it drops nothing, and fails where W&B would drop a step."""

  def __init__(self, wandb: FakeWandb, run_id: str):
    self.wandb, self.id = wandb, run_id
    self.starting_step = max((step for step, _ in wandb.history.get(run_id, [])), default=-1) + 1

  def log(self, data: dict, step: int) -> None:
    history = self.wandb.history.setdefault(self.id, [])
    assert step >= max((s for s, _ in history), default=0), "W&B would drop a step below its last"
    history.append((step, data))

  def finish(self) -> None:
    self.wandb.finished.append(self.id)


def test_wandb_logs_one_run_per_run_id_which_a_resume_continues(tmp_path, monkeypatch):
  fake = FakeWandb()
  monkeypatch.setitem(sys.modules, "wandb", fake)
  run_dir = _finetune_dir(tmp_path, **{"logging.wandb_project": "scaling", "logging.wandb_entity": "lab"})
  killed = train.MetricsLog(run_dir, None, True)
  for record in _records(range(0, 31, 5)):
    killed.write(record)
  resumed = train.MetricsLog(run_dir, 20, True)  # Preempted after step 30; the checkpoint was at 20.
  for record in _records(range(25, 41, 5)):
    resumed.write(record)
  resumed.close()
  hparams = metric_writers.hparams(json.loads((run_dir / "spec.json").read_text())["config"])
  expected = {
    "project": "scaling",
    "entity": "lab",
    "group": "tiny",
    "id": run_dir.name,
    "name": run_dir.name,
    "config": hparams,
    "resume": "allow",
    "reinit": "create_new",
    "dir": str(run_dir),
  }
  assert fake.inits == [expected, expected] and fake.finished == [run_dir.name]
  lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
  assert fake.history[run_dir.name] == [(r["step"], {TAGS[k]: v for k, v in r.items() if k != "step"}) for r in lines]


def test_wandb_is_off_unless_a_study_names_a_project(tmp_path):
  run_dir = _finetune_dir(tmp_path)
  assert json.loads((run_dir / "spec.json").read_text())["execution"]["logging"]["wandb_project"] == ""
  assert [type(w) for w in metric_writers.for_run(run_dir)] == [metric_writers.TensorBoardWriter]
  old = json.loads((run_dir / "spec.json").read_text())  # A spec from before W&B logging: no "logging".
  del old["execution"]["logging"]
  (run_dir / "spec.json").write_text(json.dumps(old))
  assert grid.Run.from_json(old).execution == old["execution"]
  assert [type(w) for w in metric_writers.for_run(run_dir)] == [metric_writers.TensorBoardWriter]


def test_real_wandb_offline_keeps_a_run_per_lane(tmp_path, monkeypatch):
  """The pinned wandb takes these arguments, offline: two lanes of a pack log at once, each to the
  W&B run of its id."""
  import wandb  # The test extra's: the writer imports it only where a study asks for W&B.

  monkeypatch.setenv("WANDB_MODE", "offline")
  monkeypatch.setenv("WANDB_SILENT", "true")
  study = study_lib.validate(tiny_study(**{"logging.wandb_project": "scaling"}), 8)
  runs = kinds.expand(study)
  local.write_plan(study, runs, tmp_path)
  lanes = [tmp_path / "runs" / r.id for r in runs if r.kind == "finetune"]
  logs = [train.MetricsLog(epath.Path(d), None, True) for d in lanes]
  for record in _records(range(0, 11, 5)):
    for log in logs:
      log.write(record)
  for log in logs:
    log.close()
  wandb.teardown()  # Waits for W&B's service process to write out what the runs logged.
  for d in lanes:
    (offline,) = (d / "wandb").glob(f"offline-run-*-{d.name}")
    assert b"dev/loss" in (offline / f"run-{d.name}.wandb").read_bytes()


def test_wandb_on_a_host_without_it_fails_in_one_line(tmp_path, monkeypatch):
  """A study planned where wandb is installed, run on a host where it is not."""
  run_dir = _finetune_dir(tmp_path)
  spec = json.loads((run_dir / "spec.json").read_text())
  spec["execution"]["logging"]["wandb_project"] = "scaling"
  (run_dir / "spec.json").write_text(json.dumps(spec))
  monkeypatch.setitem(sys.modules, "wandb", None)  # As if not installed.
  message = r"logging.wandb_project='scaling' needs Weights & Biases, .* install the extra scaling\[wandb\]"
  with pytest.raises(study_lib.StudyError, match=message):
    train.MetricsLog(run_dir, None, True)
