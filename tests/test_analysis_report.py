"""The study report's markdown: the side-by-side table of one method's fine-tunes on several tasks."""

import pandas as pd

from analysis import report


def _fine_tunes(tasks: tuple[str, ...]) -> pd.DataFrame:
  """Fine-tunes of two bases at two D_f and two seeds on each task; knowledge encodes what it was."""
  rows = []
  for t, task in enumerate(tasks):
    for n, size in ((4e5, "mid"), (1e5, "small")):
      for d_f in (80, 40):
        for seed in (0, 1):
          rows.append(
            {
              "task": task,
              "method": "full",
              "size": size,
              "non_embedding_params": n,
              "d_f": d_f,
              "seed": seed,
              "metrics.knowledge": t + n / 1e6 + d_f / 1e4 + seed / 10,
              "metrics.behaviour": 1.0 - t / 10,
              "metrics.test_loss": 2.0 + t,
            }
          )
  return pd.DataFrame(rows)


def test_a_methods_fine_tunes_on_two_tasks_are_shown_side_by_side_as_means_over_seeds():
  lines = report.task_comparison(_fine_tunes(("qa", "qa_wrong")))
  assert lines[0] == "### Tasks side by side: full"
  header, _, *rows = lines[2].splitlines()
  assert header == (
    "| base | D_f | knowledge: qa | knowledge: qa_wrong | behaviour: qa | behaviour: qa_wrong | "
    "test loss: qa | test loss: qa_wrong |"
  )
  cells = [r.strip("| ").split(" | ") for r in rows]
  assert [c[:2] for c in cells] == [["small", "40"], ["small", "80"], ["mid", "40"], ["mid", "80"]]  # By N, then D_f.
  # Knowledge of the small base at D_f 40: 0.1 + 0.004 + the mean seed term 0.05, then 1 more on the second task.
  assert [float(v) for v in cells[0][2:]] == [0.154, 1.154, 1.0, 0.9, 2.0, 3.0]


def test_one_task_has_no_side_by_side_table():
  assert report.task_comparison(_fine_tunes(("qa",))) == []
