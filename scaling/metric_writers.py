"""Where a run's metric records go besides metrics.jsonl: TensorBoard event files, and W&B if asked.

`scaling.train.MetricsLog` feeds them. metrics.jsonl stays the source of truth: each start of a
run (a resume included) makes its writers anew from the lines it keeps, so that the event files
hold what metrics.jsonl holds, each step once. A run's event files are in
`<run_dir>/tensorboard/`, so `tensorboard --logdir WORKDIR` shows one curve per run id, with the
run's kind, size, task, method and D_f in the HParams tab. Weights & Biases (the extra
`scaling[wandb]`) is on where a study sets `logging.wandb_project`: one W&B run per run id, which a
preempted run resumes.

Event files are written by tensorboardX (no TensorFlow). On gs://, they and metrics.jsonl go
through epath (gcsfs), as the workdir's other files do: an object cannot be appended to, so each
flush rewrites the file whole.
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol

from etils import epath

from scaling import methods, results, study_fields


@contextlib.contextmanager
def _without_torch() -> Iterator[None]:
  """Inside, `import torch` fails as where torch is not installed (unless it is imported already)."""
  absent = "torch" not in sys.modules
  if absent:
    sys.modules["torch"] = None  # type: ignore[assignment]
  try:
    yield
  finally:
    if absent:
      del sys.modules["torch"]


# tensorboardX imports torch where it is installed (the test extra has it), only to take torch
# tensors as values, which no run logs: 2 s of every process that writes metrics.
with _without_torch():
  from tensorboardX import record_writer, summary
  from tensorboardX.event_file_writer import EventsWriter
  from tensorboardX.proto import event_pb2

TENSORBOARD = "tensorboard"  # A run's event files: <run_dir>/tensorboard/.
EVENT_FILES = "events.out.tfevents.*"


class Writer(Protocol):
  """A destination of a run's metric records ({"step": s, "loss": ..., "dev_loss": ...})."""

  def write(self, records: Sequence[Mapping[str, Any]]) -> None:
    """Writes each record's values at its step, then flushes, so that curves show while a run trains."""

  def close(self) -> None:
    """Ends the writing."""


def tag(key: str) -> str:
  """The chart of a record's key: dev_loss -> dev/loss, loss -> train/loss."""
  return f"dev/{key.removeprefix('dev_')}" if key.startswith("dev_") else f"train/{key}"


def hparams(config: Mapping[str, Any]) -> dict[str, Any]:
  """The hyperparameters that runs are compared by (TensorBoard's HParams tab, W&B's config), from a
  run's spec: kind, size, base, task, method, D_f and seed where it has them, and the learning rate
  and step budget it trains with."""
  out = {key: config[key] for key in ("kind", "size", "base", "task", "d_f", "seed") if key in config}
  if "method" in config:
    out["method"] = methods.label(config["method"])
  if "train" in config:  # A method may set its own learning rate (its label then names it too).
    train = {**config["train"], **methods.training_overrides(config.get("method", {}))}
    out.update(learning_rate=train["learning_rate"], max_steps=train["max_steps"])
  return out


class ObjectFiles:
  """tensorboardX's writer factory of `ObjectFile`s."""

  def open(self, path: str) -> results.ObjectFile:
    return results.ObjectFile(path)

  def directory_check(self, path: str) -> None:
    del path  # An object store has no folders to make.


# gs:// event files through epath (gcsfs), as the workdir's other files: tensorboardX's own gs://
# writer needs google-cloud-storage and its credentials. Local paths keep tensorboardX's files.
record_writer.register_writer_factory("gs", ObjectFiles())


class TensorBoardWriter:
  """A run's event file: each record's values as scalars at its step, and the run's hyperparameters
  for the HParams tab (which builds its table from every run's)."""

  def __init__(self, logdir: epath.Path, params: Mapping[str, Any]):
    for old in logdir.glob(EVENT_FILES):  # An earlier start's: its records are written again.
      old.unlink()
    logdir.mkdir(parents=True, exist_ok=True)
    # tensorboardX's synchronous writer: its SummaryWriter queues events for a thread, and a flush
    # does not wait for the queue.
    self._events = EventsWriter(str(logdir / "events"))
    _, session_start, _ = summary.hparams(dict(params), {})
    self._add(session_start, 0)

  def _add(self, value: Any, step: int) -> None:
    self._events.write_event(event_pb2.Event(wall_time=time.time(), step=step, summary=value))

  def write(self, records: Sequence[Mapping[str, Any]]) -> None:
    for record in records:
      for key, value in record.items():
        if key != "step":
          self._add(summary.scalar(tag(key), value), record["step"])
    self._events.flush()

  def close(self) -> None:
    self._events.close()


class WandbWriter:
  """A W&B run whose id is the run's: a preempted run resumes it rather than starting another."""

  def __init__(self, run_dir: epath.Path, settings: Mapping[str, str], params: Mapping[str, Any]):
    study_fields.require_wandb(settings["wandb_project"])  # A host without the extra: one line, before training.
    import wandb  # Here: an optional extra, imported only where a run logs to it.

    # W&B keeps its files on a local disk: beside the run's own (where `wandb sync` finds an
    # offline run), or in the temporary folder for a gs:// workdir.
    folder = tempfile.gettempdir() if str(run_dir).startswith("gs://") else str(run_dir)
    # create_new: the lanes of a pack are W&B runs of one process at once.
    self._run = wandb.init(
      project=settings["wandb_project"],
      entity=settings.get("wandb_entity") or None,
      group=settings.get("wandb_group") or None,
      id=run_dir.name,
      name=run_dir.name,
      config=dict(params),
      resume="allow",
      reinit="create_new",
      dir=folder,
    )
    # A resumed W&B run holds what was logged before the preemption, and ignores steps below it:
    # the records written again up to there (the same values) are not sent.
    self._start = self._run.starting_step

  def write(self, records: Sequence[Mapping[str, Any]]) -> None:
    for record in records:
      if record["step"] >= self._start:
        self._run.log({tag(key): value for key, value in record.items() if key != "step"}, step=record["step"])

  def close(self) -> None:
    self._run.finish()


def for_run(run_dir: epath.Path) -> list[Writer]:
  """A run's writers: TensorBoard's, and W&B's where its spec.json sets `execution.logging.wandb_project`.
  A run dir without a spec (a benchmark's) gets TensorBoard's without hyperparameters."""
  path = run_dir / "spec.json"
  spec = json.loads(path.read_text()) if path.exists() else {"config": {}, "execution": {}}
  params = hparams(spec["config"])
  writers: list[Writer] = [TensorBoardWriter(run_dir / TENSORBOARD, params)]
  settings = spec["execution"].get("logging", {})  # Specs older than W&B logging have none.
  if settings.get("wandb_project"):
    writers.append(WandbWriter(run_dir, settings, params))
  return writers
