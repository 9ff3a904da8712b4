"""Result records are written atomically and load as one table, on local disks and on gs://."""

import errno
import json
import os
import subprocess
import sys

from scaling import results

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_write_json_is_atomic_and_leaves_no_temporaries(tmp_path):
  path = tmp_path / "runs" / "a" / "result.json"
  results.write_json(path, {"x": 1})
  results.write_json(path, {"x": 2})
  assert json.loads(path.read_text()) == {"x": 2}
  assert os.listdir(path.parent) == ["result.json"]


def test_a_write_that_fails_partway_leaves_the_old_file_whole(tmp_path):
  path = tmp_path / "runs" / "a" / "result.json"
  results.write_json(path, {"x": 1})
  old = path.read_text()
  # A writer that may write at most 1000 bytes to a file (RLIMIT_FSIZE) fails partway through a
  # 100 kB record: a write in place would leave its first 1000 bytes for readers to see.
  code = f"""
import resource, signal
from scaling import results
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # A write past the limit fails (EFBIG) instead of killing.
resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))
try:
  results.write_json({str(path)!r}, {{"x": "y" * 100_000}})
except OSError as e:
  print(e.errno)
"""
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
  assert proc.stdout.strip() == str(errno.EFBIG), proc.stderr
  assert path.read_text() == old


def test_unfinished_runs_are_not_in_the_table(tmp_path):
  results.write_json(tmp_path / "runs" / "a" / "result.json", {"id": "a", "metrics": {"loss": 1.5}})
  (tmp_path / "runs" / "b").mkdir(parents=True)  # Started, not finished.
  assert results.read_result(tmp_path / "runs" / "b") is None
  table = results.load_table(tmp_path)
  assert list(table["id"]) == ["a"] and table["metrics.loss"].iloc[0] == 1.5
  assert results.load_table(tmp_path / "nowhere").empty


def test_a_gs_workdir_sees_what_other_processes_write_after_a_listing(storage):
  workdir = results.workdir_path(storage.workdir())
  assert str(workdir).startswith("gs://")
  results.write_json(workdir / "runs" / "a" / "result.json", {"id": "a", "metrics": {"loss": 1.5}})
  assert list(results.load_table(workdir)["id"]) == ["a"]  # Lists runs/.
  other = (
    f"from scaling import results; results.write_json({str(workdir / 'runs' / 'b' / 'result.json')!r}, {{'id': 'b'}})"
  )
  subprocess.run([sys.executable, "-c", other], check=True, env={**os.environ, **storage.env}, cwd=REPO)
  assert results.read_result(workdir / "runs" / "b") == {"id": "b"}  # gcsfs's listings cache would hide it.
  assert list(results.load_table(workdir)["id"]) == ["a", "b"]


def test_a_gs_workdir_builds_its_datasets_on_this_host(storage, tmp_path):
  assert results.data_dir(tmp_path) == tmp_path / "data"
  assert str(results.data_dir(storage.workdir())) == storage.env["SCALING_DATA_DIR"]
