"""Result records are written atomically and load as one table."""

import json
import os

from scaling import results


def test_write_json_is_atomic_and_leaves_no_temporaries(tmp_path):
  path = tmp_path / "runs" / "a" / "result.json"
  results.write_json(path, {"x": 1})
  results.write_json(path, {"x": 2})
  assert json.loads(path.read_text()) == {"x": 2}
  assert os.listdir(path.parent) == ["result.json"]


def test_unfinished_runs_are_not_in_the_table(tmp_path):
  results.write_json(tmp_path / "runs" / "a" / "result.json", {"id": "a", "metrics": {"loss": 1.5}})
  (tmp_path / "runs" / "b").mkdir(parents=True)  # Started, not finished.
  assert results.read_result(tmp_path / "runs" / "b") is None
  table = results.load_table(tmp_path)
  assert list(table["id"]) == ["a"] and table["metrics.loss"].iloc[0] == 1.5
  assert results.load_table(tmp_path / "nowhere").empty
