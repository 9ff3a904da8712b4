"""The study report's markdown: the side-by-side table of one method's fine-tunes on several tasks, and what
each base gains from D_f."""

import numpy as np
import pandas as pd
import pytest

from analysis import frames, report


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


def _joint_points(law: str) -> pd.DataFrame:
  """Three bases at three D_f, two seeds each (the seeds straddle the law's loss), from one joint law."""
  rows = []
  for n in (1e4, 4e4, 1.6e5):
    for d_f in (40, 160, 640):
      loss = 30 * n**-0.3 * d_f**-0.2 + (1 if law == "multiplicative" else 0)
      if law == "additive":
        loss = 30 * n**-0.3 + 5 * d_f**-0.2 + 1
      if law == "interaction":  # Larger bases gain more from D_f: neither joint law's form.
        loss = 3 - 0.1 * np.log(n) * np.log(d_f) / 10
      rows += [{"non_embedding_params": n, "d_f": d_f, "test_loss": loss + s} for s in (-0.01, 0.01)]
  return pd.DataFrame(rows)


@pytest.mark.parametrize(
  "law, trend, shares",
  [
    ("multiplicative", "shrink", "shrink"),
    ("multiplicative_e0", "shrink", "neither"),
    ("additive", "neither", "grow"),
    ("interaction", "grow", "grow"),
  ],
)
def test_the_gains_from_d_f_by_base_say_which_joint_law_they_allow(law, trend, shares):
  points = _joint_points(law)
  gains = frames.d_gains(points, "non_embedding_params", "d_f", "test_loss")
  means = points.groupby(["non_embedding_params", "d_f"])["test_loss"].mean()
  assert list(gains.index) == [1e4, 4e4, 1.6e5]
  assert gains.to_numpy() == pytest.approx([means[n, 40] - means[n, 640] for n in gains.index])
  assert frames.gains_trend(gains) == trend
  [line, _] = report.gains_lines(points, "non_embedding_params")
  assert line.startswith("Test loss gained from d_f 40 to 640, by base non-embedding parameters (")
  assert ("as the multiplicative law has them" in line) == law.startswith("multiplicative")
  assert ("which neither joint law allows" in line) == (law == "interaction")
  logs = frames.d_gains(points, "non_embedding_params", "d_f", "test_loss", log=True)
  assert logs.to_numpy() == pytest.approx([np.log(means[n, 40] / means[n, 640]) for n in logs.index])
  assert frames.gains_trend(logs) == shares
  assert ("the multiplicative law keeps them equal where E is 0" in line) == (law == "multiplicative_e0")
  assert ("which the multiplicative law does not allow" in line) == (shares == "grow")


def test_gains_need_two_bases_with_two_shared_d_f():
  points = _joint_points("multiplicative")
  assert frames.d_gains(points[points.non_embedding_params == 1e4], "non_embedding_params", "d_f", "test_loss") is None
  lone = points[(points.non_embedding_params == 1e4) | (points.d_f == 40)]  # Only d_f 40 is every base's.
  assert frames.d_gains(lone, "non_embedding_params", "d_f", "test_loss") is None
  assert report.gains_lines(lone, "non_embedding_params") == []
