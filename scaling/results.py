"""One record per run, written atomically and last; all records as one pandas table."""

from __future__ import annotations

import json
import os
import uuid
from typing import TYPE_CHECKING, Any, BinaryIO

import fsspec
from etils import epath

if TYPE_CHECKING:
  import pandas as pd

RESULT = "result.json"
# gs:// paths go through gcsfs, whose listings cache would hide files that other hosts write after
# a listing (a launcher would never see a run's result.json): every look asks the bucket.
fsspec.config.conf.setdefault("gs", {})["use_listings_cache"] = False


def workdir_path(path: str | epath.Path) -> epath.Path:
  """A workdir as an absolute path (orbax needs one); gs:// paths are returned as they are."""
  return epath.Path(path if str(path).startswith("gs://") else os.path.abspath(path))


def data_dir(workdir: str | epath.Path) -> epath.Path:
  """Where a study's derived datasets (the world's, Shakespeare's) are built: <workdir>/data, or for a
  gs:// workdir a folder on this host's disk ($SCALING_DATA_DIR, default ~/.cache/scaling/data)."""
  # array_record reads and writes local files only, and these datasets are made again from their
  # configs in seconds: each host of a pod builds its own copy.
  if str(workdir).startswith("gs://"):
    return epath.Path(os.environ.get("SCALING_DATA_DIR", os.path.expanduser("~/.cache/scaling/data")))
  return epath.Path(workdir) / "data"


def write_json(path: str | epath.Path, obj: Any) -> None:
  """Writes JSON so that readers see the old file or the whole new one, never a part."""
  write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=float))


def write_text(path: str | epath.Path, text: str) -> None:
  """Writes a file so that readers see the old file or the whole new one, never a part."""
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  if str(path).startswith("gs://"):  # An object store write is already all-or-nothing.
    path.write_text(text)
    return
  tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
  tmp.write_text(text)
  os.replace(tmp, path)


class ObjectFile:
  """A file on an object store, which cannot be appended to: the bytes written so far stay in
  memory, and each flush rewrites the whole object, which readers see whole or not at all (as
  TensorFlow's GCS files do). Event files and metrics logs are small."""

  def __init__(self, path: str, data: bytes = b""):
    self.path, self.data = epath.Path(path), bytearray(data)

  def write(self, data: bytes) -> None:
    self.data += data

  def flush(self) -> None:
    self.path.write_bytes(bytes(self.data))

  def close(self) -> None:
    self.flush()


def appending(path: epath.Path, text: str) -> ObjectFile | BinaryIO:
  """`path` written as `text` and open to append to, each write seen once flushed: on gs://, where
  gcsfs would silently overwrite, an ObjectFile."""
  if str(path).startswith("gs://"):
    f = ObjectFile(str(path), text.encode())
    f.flush()
    return f
  write_text(path, text)
  return path.open("ab")


def read_result(run_dir: str | epath.Path) -> dict | None:
  """The run's result record, or None if the run has not finished."""
  path = epath.Path(run_dir) / RESULT
  return json.loads(path.read_text()) if path.exists() else None


def load_table(workdir: str | epath.Path) -> pd.DataFrame:
  """Every finished run of a workdir, one row each; nested fields become dotted columns."""
  import pandas as pd  # Here, not at the top: a run's process needs no table (pandas takes ~1 s to import).

  runs = epath.Path(workdir) / "runs"
  records = [r for d in sorted(runs.iterdir()) if (r := read_result(d)) is not None] if runs.exists() else []
  return pd.json_normalize(records) if records else pd.DataFrame()
