"""The fitting CLI and fit_frame on any data: the shipped CSV, bad columns and rows."""

import json
import os
import sys

import numpy as np
import pandas as pd
import processes
import pytest
from scipy import optimize

from analysis import fit as fit_lib
from analysis import frames
from analysis import report as report_lib
from scaling import laws

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CSV = os.path.join(ROOT, "examples", "smoke_qa_full.csv")


@pytest.mark.slow
def test_csv_cli_fits_the_shipped_example(tmp_path):
  out = tmp_path / "fit.json"
  proc = processes.run(
    [
      sys.executable,
      "-m",
      "analysis.fit",
      "--csv",
      CSV,
      "--x",
      "non_embedding_params",
      "--d",
      "d_f",
      "--y",
      "test_loss",
      "--law",
      "multiplicative",
      "--bootstrap",
      "50",
      "--json",
      str(out),
    ],
    cwd=ROOT,
    env={**os.environ, "PYTHONPATH": ROOT},
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "alpha =" in proc.stdout and "Delta_h (largest_d)" in proc.stdout
  record = json.loads(out.read_text())
  assert record["num_points"] == 20 and record["params"]["alpha"] > 0 and record["params"]["beta"] > 0
  lo, hi = record["intervals"]["alpha"]
  assert lo <= record["params"]["alpha"] <= hi
  assert len(record["validation"]["heldout_relative_errors"]) == 4  # Four bases at the largest D_f.
  # The CLI fits what it is told to: the same fit of the CSV as pandas reads it, in this process.
  table = pd.read_csv(CSV)
  with pytest.warns(UserWarning, match=r"optimum of \['e'\] lies outside the starting grid"):  # E -> 0.
    same = frames.fit_frame(table, "multiplicative", d="d_f", y="test_loss", x="non_embedding_params")
  assert record["params"] == pytest.approx(same["params"], rel=1e-9)
  assert record["objective"] == pytest.approx(same["objective"], rel=1e-12)
  # And its optimum is the objective's: scipy's L-BFGS-B, from a tenth of the law's starting grid,
  # finds no lower sum of Huber losses of the log residuals, and the same alpha. Every residual here
  # is far past delta, in Huber's linear part, where the optimum is flat along A, beta and E (scipy's
  # optima of this value have beta from 0.34 to 0.45): only alpha and the value are determined.
  logs = [np.log(table[c].to_numpy(np.float64)) for c in ("non_embedding_params", "d_f", "test_loss")]
  best = min(
    (
      optimize.minimize(_huber_objective, start, args=(*logs, record["huber_delta"]), jac=True, method="L-BFGS-B")
      for start in laws.get_law("multiplicative").starts()[::10]
    ),
    key=lambda r: r.fun,
  )
  assert record["objective"] == pytest.approx(best.fun, rel=1e-9)
  assert record["params"]["alpha"] == pytest.approx(best.x[1], rel=1e-6)


def _huber_objective(theta, log_x, log_d, log_y, delta):
  """The multiplicative law's fitting objective, sum of Huber_delta(log L_pred - log L), and its gradient."""
  a, alpha, beta, e = theta
  u = a - alpha * log_x - beta * log_d
  log_pred = np.logaddexp(u, e)
  r = log_pred - log_y
  quadratic = np.minimum(np.abs(r), delta)
  dr, du = np.clip(r, -delta, delta), np.exp(u - log_pred)  # d Huber / d r, d log_pred / d u.
  grad = [(dr * du).sum(), -(dr * du * log_x).sum(), -(dr * du * log_d).sum(), (dr * (1 - du)).sum()]
  return (0.5 * quadratic**2 + delta * (np.abs(r) - quadratic)).sum(), np.asarray(grad)


def test_csv_cli_names_the_files_line_of_a_bad_value(tmp_path):
  (tmp_path / "points.csv").write_text("d,loss\n1,3.0\n2,x\n3,2.0\n4,1.0\n")  # 'x' is on the file's line 3.
  proc = processes.run(
    [
      sys.executable,
      "-m",
      "analysis.fit",
      "--csv",
      str(tmp_path / "points.csv"),
      "--d",
      "d",
      "--y",
      "loss",
      "--law",
      "single",
    ],
    cwd=ROOT,
    env={**os.environ, "PYTHONPATH": ROOT},
  )
  assert proc.returncode != 0 and "column 'loss' must be positive and finite; line 3 is 'x'" in proc.stderr


def test_csv_cli_names_a_missing_file(tmp_path):
  proc = processes.run(
    [sys.executable, "-m", "analysis.fit", "--csv", str(tmp_path / "none.csv"), "--d", "d", "--y", "y"],
    cwd=ROOT,
    env={**os.environ, "PYTHONPATH": ROOT},
  )
  assert proc.returncode != 0 and f"--csv {tmp_path / 'none.csv'}: cannot read it" in proc.stderr
  assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
  "args, message",
  [
    (["--bootstrap", "0"], "--bootstrap=0 with --workdir; allowed: 1 or more"),
    (["--law", "single", "--holdout", "none"], "--law, --holdout apply to --csv; a study's laws"),
  ],
)
def test_workdir_cli_refuses_what_it_would_ignore(tmp_path, args, message):
  proc = processes.run(
    [sys.executable, "-m", "analysis.fit", "--workdir", str(tmp_path), *args],
    cwd=ROOT,
    env={**os.environ, "PYTHONPATH": ROOT},
  )
  assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


def test_single_factor_law_on_a_frame():
  d = np.geomspace(10, 1e4, 10)
  df = pd.DataFrame({"n": d, "loss": 3.0 * d**-0.5 + 1.0})
  record = frames.fit_frame(df, "single", d="n", y="loss", holdout=None)
  assert record["params"]["beta"] == pytest.approx(0.5, abs=1e-4)
  assert record["params"]["E"] == pytest.approx(1.0, rel=1e-4)


@pytest.mark.parametrize(
  "frame, message",
  [
    (
      pd.DataFrame({"n": [1.0, 2.0, 3.0, 4.0], "loss": [3.0, 2.0, 0.0, 1.0]}),
      "column 'loss' must be positive and finite; row 2 is 0.0",
    ),
    (
      pd.DataFrame({"n": [1.0, 2.0, 3.0, 4.0], "loss": [3.0, "x", 2.0, 1.0]}),
      "column 'loss' must be positive and finite; row 1 is 'x'",
    ),
    (pd.DataFrame({"n": [1.0, 2.0, 3.0, 4.0]}), "column 'loss' is not in the data"),
    (pd.DataFrame({"n": [1.0, 2.0], "loss": [2.0, 1.0]}), "2 points cannot determine the 3 parameters"),
  ],
)
def test_bad_frames_name_the_column_and_row(frame, message):
  with pytest.raises(ValueError, match=message):
    frames.fit_frame(frame, "single", d="n", y="loss", holdout=None)


def test_diverged_runs_are_excluded_with_a_warning():
  rows = [
    {
      "id": f"ft-{i}",
      "kind": "finetune",
      "task": "qa",
      "method": "full",
      "size": "d32l2",
      "non_embedding_params": 100,
      "pretrain_tokens": 1000.0,
      "trainable_params": 200,
      "d_f": d,
      "seed": 0,
      "metrics.test_loss": loss,
    }
    for i, (d, loss) in enumerate([(8, 2.0), (16, float("nan")), (32, 1.5), (64, float("inf"))])
  ]
  table = pd.DataFrame(rows + [{"id": "pt", "kind": "pretrain", "metrics.test_loss": float("nan")}])
  with pytest.warns(UserWarning, match=r"excluded 2 runs with a non-finite test loss: \['ft-1', 'ft-3'\]"):
    points = fit_lib.finetune_points(table)
  assert list(points["d_f"]) == [8, 32] and list(points["test_loss"]) == [2.0, 1.5]


def _law_table(extra_budgets: bool, tokens_known: bool = True) -> pd.DataFrame:
  """Fine-tunes of three bases (and, if asked, the middle one at two smaller D_p, worse by 1 nat)
  whose test loss follows L = 50 N^-0.3 D_f^-0.2 + 1.5 exactly at the final D_p."""
  rows = []
  bases = [(n, 3e11, 0.0) for n in (1e5, 4e5, 1.6e6)]
  if extra_budgets:
    bases += [(4e5, 1e11, 1.0), (4e5, 2e11, 0.5)]
  for n, tokens, worse in bases:
    for d_f in (100, 200, 400, 800):
      rows.append(
        {
          "kind": "finetune",
          "id": f"{n}-{tokens}-{d_f}",
          "task": "t",
          "method": "full",
          "size": {1e5: "small", 4e5: "mid", 1.6e6: "large"}[n],
          "non_embedding_params": n,
          "pretrain_tokens": tokens if tokens_known else None,
          "trainable_params": 1000,
          "d_f": d_f,
          "seed": 0,
          "metrics.test_loss": 50 * n**-0.3 * d_f**-0.2 + 1.5 + worse,
        }
      )
  return pd.DataFrame(rows)


def test_law_over_n_holds_d_p_fixed_and_curves_are_per_base():
  points = fit_lib.finetune_points(_law_table(extra_budgets=True))
  assert fit_lib.varied_axes(points) == ["non_embedding_params", "pretrain_tokens"]  # P is one per base here.
  over_n = fit_lib.law_points(points, "non_embedding_params")
  exact = 50 * over_n["non_embedding_params"] ** -0.3 * over_n["d_f"] ** -0.2 + 1.5
  assert len(over_n) == 12 and np.allclose(over_n["test_loss"], exact)  # The final D_p only, not a mean.
  over_dp = fit_lib.law_points(points, "pretrain_tokens")
  assert len(over_dp) == 12 and set(over_dp["pretrain_tokens"]) == {1e11, 2e11, 3e11}  # The middle base's.
  assert set(points["base"]) == {"small", "large", "mid at D_p 1e+11", "mid at D_p 2e+11", "mid at D_p 3e+11"}
  # Imported bases that do not say their D_p still make points.
  assert len(fit_lib.finetune_points(_law_table(extra_budgets=False, tokens_known=False))) == 12


def test_a_study_too_small_for_laws_still_gets_its_report(tmp_path):
  """One base and one D_f: nothing to fit, and the report holds the runs."""
  table = _law_table(extra_budgets=False).iloc[:1]
  table = pd.concat(
    [
      table,
      pd.DataFrame(
        [
          {
            "kind": "pretrain",
            "id": "pt",
            "size": "small",
            "non_embedding_params": 1e5,
            "pretrain_tokens": 3e11,
            "metrics.heldout_loss": 2.0,
          }
        ]
      ),
    ]
  )
  points = fit_lib.finetune_points(table)
  assert fit_lib.fit_study(table, 1e-3, 10) == []
  text = report_lib.write_report(table, points, [], tmp_path).read_text()
  assert "## Fine-tuned runs" in text and "### t / full" in text and "\n## t / full" not in text


@pytest.mark.slow
def test_with_two_bases_a_joint_law_holds_out_the_largest_d_f():
  """Without the larger of two bases one value of N is left, which cannot fix alpha: the law is
  validated on the largest D_f instead, where it extrapolates from points that determine it."""
  table = _law_table(extra_budgets=False)
  table = table[table["size"] != "large"]
  # Two values of N leave nothing to validate the additive law's five parameters on.
  with pytest.warns(UserWarning, match="too few to fit and validate the additive law"):
    fits = {f["law"]: f for f in fit_lib.fit_study(table, 1e-3, bootstrap=10) if f["x"]}
  assert fits["multiplicative"]["validation"]["holdout"] == "largest_d"
  assert fits["multiplicative"]["validation"]["heldout_error"] < 1e-6  # The points follow the law exactly.
  assert "additive" not in fits
  points = fit_lib.law_points(fit_lib.finetune_points(table), "non_embedding_params")
  assert frames.choose_holdout(points, "multiplicative", "d_f", "non_embedding_params") == "largest_d"
  assert frames.choose_holdout(_law_table(False), "multiplicative", "d_f", "non_embedding_params") == "largest_x"
  with pytest.raises(
    ValueError, match="holding out largest_x leaves 1 distinct value of x; the multiplicative law needs 2 to determine"
  ):
    laws.validate(
      "multiplicative", points["d_f"], points["test_loss"], x=points["non_embedding_params"], holdout="largest_x"
    )


@pytest.mark.slow
def test_the_report_draws_the_points_a_joint_law_was_fitted_to(tmp_path, monkeypatch):
  """With the middle base at three D_p, the law over N is fitted at the final D_p; its figures
  show those points, not means over every D_p."""
  table = _law_table(extra_budgets=True)
  points = fit_lib.finetune_points(table)
  fits = [{"section": "finetune", **f} for f in fit_lib.fit_study(table, 1e-3, bootstrap=10)]
  drawn = {}
  monkeypatch.setattr(report_lib, "plot_joint", lambda pts, fit, path: drawn.setdefault(fit["x"], pts))
  report_lib.write_report(table, points, fits, tmp_path)
  over_n = drawn["non_embedding_params"]
  exact = 50 * over_n["non_embedding_params"] ** -0.3 * over_n["d_f"] ** -0.2 + 1.5
  assert len(over_n) == 12 and np.allclose(over_n["test_loss"], exact)


def test_a_tie_of_d_p_slices_takes_the_known_budget():
  """Two ladder bases at D_p 1e6 and two imported ones that do not say their D_p: the law over N
  is fitted on the ladder's, whose D_p is known."""
  rows = [
    {"size": s, "non_embedding_params": n, "pretrain_tokens": dp, "d_f": d, "test_loss": 1.0}
    for s, n, dp in (("a", 2.5e4, 1e6), ("b", 1e5, 1e6), ("c", 3e5, np.nan), ("d", 9e5, np.nan))
    for d in (40, 160, 640)
  ]
  assert sorted(fit_lib.law_points(pd.DataFrame(rows), "non_embedding_params")["non_embedding_params"].unique()) == [
    2.5e4,
    1e5,
  ]
