"""The fitting CLI and fit_frame on any data: the shipped CSV, bad columns and rows; which fits are not
determined, predictions against the validated range, and the laws ranked by held-out error."""

import json
import os
import sys
import warnings

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
CSV = os.path.join(ROOT, "examples", "qa_full.csv")


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


ON_CSV = ["--csv", CSV, "--d", "d_f", "--y", "test_loss"]


@pytest.mark.parametrize(
  "args, message",
  [
    (["--workdir", "W", "--bootstrap", "0"], "--bootstrap=0 with --workdir; allowed: 1 or more"),
    (["--workdir", "W", "--law", "single", "--holdout", "none"], "--law, --holdout apply to --csv; a study's laws"),
    (["--workdir", "W", "--predict", "x=1,d=2"], "--predict apply to --csv"),
    ([*ON_CSV, "--law", "auto", "--holdout", "largest_d"], "--holdout with --law auto; auto holds out the largest x"),
    ([*ON_CSV, "--predict", "d=2", "--holdout", "none"], "--predict with --holdout none; a prediction is checked"),
    ([*ON_CSV, "--predict", "x=1e6,q=3"], "'q=3' in 'x=1e6,q=3'; allowed: key=value with a key of x, d, u"),
    ([*ON_CSV, "--predict", "d=-2"], "'d=-2' in 'd=-2'; allowed: key=value with a key of x, d, u and a positive"),
  ],
)
def test_cli_refuses_what_it_would_ignore_or_cannot_do(tmp_path, args, message):
  proc = processes.run(
    [sys.executable, "-m", "analysis.fit", *(str(tmp_path) if a == "W" else a for a in args)],
    cwd=ROOT,
    env={**os.environ, "PYTHONPATH": ROOT},
  )
  assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


def test_single_factor_law_on_a_frame():
  d = np.geomspace(10, 1e4, 8)  # Up to 8 points share the fitter's programs with the other fits over d here.
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


def test_the_data_constrained_law_without_a_unique_data_column_names_it():
  frame = pd.DataFrame({"N": [1e6, 2e6, 4e6] * 3, "D": [1e3] * 3 + [2e3] * 3 + [4e3] * 3, "loss": np.linspace(3, 2, 9)})
  with pytest.raises(ValueError, match=r"law 'data_constrained' takes inputs .*; u \(the unique data\) is missing"):
    frames.fit_frame(frame, "data_constrained", d="D", y="loss", x="N")


def test_the_shipped_examples_joint_fits_are_not_determined():
  """Its 20 points leave A, beta and E of both joint laws open (E runs to 0 in Huber's linear part), and alpha
  determined; the CLI and the report say so instead of numbers."""
  table = pd.read_csv(CSV)
  for law in ("multiplicative", "additive"):
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")  # E off the grid.
      record = frames.fit_frame(table, law, d="d_f", y="test_loss", x="non_embedding_params", holdout="largest_x")
    assert not record["determined"] and set(record["undetermined"]) == {"A", "beta", "E"}, law
    text = fit_lib.format_fit(record)
    assert "     A = not determined (" in text and "alpha = 0." in text and "  beta = not determined (" in text
    assert "A=not determined" in report_lib.fit_row(record)["parameters"]


def test_a_prediction_beyond_the_validated_range_warns_and_one_within_it_does_not():
  table = pd.read_csv(CSV)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    record = frames.fit_frame(
      table, "multiplicative", d="d_f", y="test_loss", x="non_embedding_params", bootstrap=20, holdout="largest_x"
    )
  # Fitted to the three smaller bases (up to 1.0e5), validated at the largest (3.3e5): 3.3x.
  assert frames.validated_range(record) == (
    "fitted to 3 non_embedding_params up to 1.01e+05 and 5 d_f up to 640, validated at 3.30x non_embedding_params"
  )
  p = record["params"]
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    within = fit_lib.format_prediction(record, {"x": 2e5, "d": 320.0})
  inside = frames.predict(record, {"x": 2e5, "d": 320.0})
  assert inside["prediction"] == pytest.approx(p["A"] * 2e5 ** -p["alpha"] * 320.0 ** -p["beta"] + p["E"], rel=1e-9)
  assert inside["beyond"] == {} and inside["band"][0] < inside["prediction"] < inside["band"][1]
  assert within.startswith(f"prediction at x=200000, d=320: L = {inside['prediction']:.4g}  [")
  with pytest.warns(UserWarning) as caught:
    fit_lib.format_prediction(record, {"x": 1e6, "d": 2000.0})
  assert [str(w.message).split(":")[0] for w in caught] == [
    "x=1e+06 lies beyond the validated range",
    "d=2000 lies beyond the validated range",
  ]
  assert "3.01x the largest x validated (3.324e+05)" in str(caught[0].message)
  assert "3.12x the largest d validated (640)" in str(caught[1].message)


def test_auto_fits_the_laws_of_the_columns_given_and_only_those_the_points_can_carry():
  """Over d alone, five points: the single and rectified laws (3 and 4 parameters), not the broken one (6)."""
  d = np.asarray([40.0, 80.0, 160.0, 320.0, 640.0])
  frame = pd.DataFrame({"d": d, "loss": 3.0 * d**-0.4 + 1.0})
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    records = frames.fit_laws(frame, "d", "loss")
  assert {r["law"] for r in records} == {"single", "rectified"}
  assert records[0]["law"] == "single" and records[0]["chosen"]  # The law the points follow extrapolates best.
  assert all(r["ranking"]["holdouts"] == ["largest_d"] for r in records)


@pytest.mark.slow  # Five joint laws, each validated twice.
def test_auto_gives_the_unique_data_only_to_the_law_that_takes_it():
  """With a U column, every joint law is fitted: the data-constrained law with U, the others without it."""
  n, d = (a.ravel() for a in np.meshgrid([1e6, 4e6, 1.6e7, 6.4e7], [1e8, 4e8, 1.6e9, 6.4e9]))
  frame = pd.DataFrame({"N": n, "D": d, "U": d / 4, "loss": 1.7 + 400 * n**-0.35 + 600 * d**-0.3})
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    records = frames.fit_laws(frame, "D", "loss", x="N", u="U")
  assert {r["law"] for r in records} == {"multiplicative", "additive", "overtrained", "kaplan", "data_constrained"}
  assert all((r["columns"].get("u") == "U") == (r["law"] == "data_constrained") for r in records)


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


def test_a_sizes_fine_tunes_are_averaged_over_its_bases_pretraining_seeds_and_its_own():
  rows = [
    {
      "id": f"ft-{base}-{seed}",
      "kind": "finetune",
      "task": "qa",
      "method": "full",
      "size": "d32l2",
      "base": f"pt-d32l2-{base}",
      "non_embedding_params": 100,
      "pretrain_tokens": tokens,
      "trainable_params": 200,
      "d_f": 8,
      "seed": seed,
      "metrics.test_loss": loss + 0.2 * seed,
    }
    for base, loss, tokens in (("p0", 2.0, 1000.0), ("p1", 1.0, 1010.0))
    for seed in (0, 1)
  ]
  # The two bases' documents packed into slightly different token counts: one budget all the same.
  bases = [
    {"id": f"pt-d32l2-{b}", "kind": "pretrain", "size": "d32l2", "spec.train.max_steps": 20, "pretrain_tokens": t}
    for b, t in (("p0", 1000.0), ("p1", 1010.0))
  ]
  points = fit_lib.finetune_points(pd.DataFrame(rows + bases))
  assert len(points) == 1 and points["seeds"].item() == 4 and points["test_loss"].item() == pytest.approx(1.6)
  assert points["pretrain_tokens"].item() == 1005.0


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
def test_the_report_draws_the_points_a_joint_law_was_fitted_to_and_ranks_the_laws(tmp_path, monkeypatch):
  """With the middle base at three D_p, the law over N is fitted at the final D_p; its figures
  show those points, not means over every D_p. Its points follow the multiplicative law exactly, which
  extrapolates best: on the largest D_f, the holdout that three bases leave every joint law."""
  table = _law_table(extra_budgets=True)
  points = fit_lib.finetune_points(table)
  fits = [{"section": "finetune", **f} for f in fit_lib.fit_study(table, 1e-3, bootstrap=10)]
  drawn = {}
  monkeypatch.setattr(report_lib, "plot_joint", lambda pts, fit, path: drawn.setdefault(fit["x"], pts))
  text = report_lib.write_report(table, points, fits, tmp_path).read_text()
  over_n = drawn["non_embedding_params"]
  exact = 50 * over_n["non_embedding_params"] ** -0.3 * over_n["d_f"] ** -0.2 + 1.5
  assert len(over_n) == 12 and np.allclose(over_n["test_loss"], exact)
  joint = {f["law"]: f for f in fits if f["x"] == "non_embedding_params"}
  assert set(joint) == set(fit_lib.JOINT_LAWS)
  assert [v["holdout"] for v in frames.validations(joint["multiplicative"])] == ["largest_x", "largest_d"]
  assert joint["multiplicative"]["validation"]["holdout"] == "largest_x"  # The report's, as before.
  assert joint["multiplicative"]["determined"] and joint["multiplicative"]["residual_slopes"]["x"] == pytest.approx(
    0.0, abs=1e-6
  )
  ranked = frames.rank(list(joint.values()))
  assert ranked[0]["law"] == "multiplicative" and ranked[0]["chosen"]
  assert all(r["ranking"]["holdouts"] == ["largest_d"] for r in ranked)
  assert "Best determined law by held-out error: multiplicative." in text
  assert "fitted to 3 non_embedding_params up to 1.6e+06 and 3 d_f up to 400, validated at 2.00x d_f" in text
  assert "by base non-embedding parameters (" in text and "as the multiplicative law has them." in text  # Its gains.


@pytest.mark.slow
def test_csv_cli_ranks_every_joint_law_and_predicts_with_the_best(tmp_path):
  """Points of Kaplan's law: --law auto finds it, determined, with the smallest held-out error; --predict
  warns beyond the largest x it was validated at, and only there."""
  n, d = (a.ravel() for a in np.meshgrid(np.geomspace(1e5, 1e7, 4), np.geomspace(100, 1e4, 5)))
  loss = ((1e5 / n) ** (0.3 / 0.4) + 200.0 / d) ** 0.4
  pd.DataFrame({"N": n, "D": d, "loss": loss}).to_csv(tmp_path / "points.csv", index=False)
  out = tmp_path / "fits.json"
  args = ["--csv", str(tmp_path / "points.csv"), "--x", "N", "--d", "D", "--y", "loss", "--law", "auto"]
  proc = processes.run(
    [sys.executable, "-m", "analysis.fit", *args, "--predict", "x=5e6,d=1000", "--predict", "x=3e7,d=1000"]
    + ["--json", str(out)],
    cwd=ROOT,
    env={**os.environ, "PYTHONPATH": ROOT},
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  records = json.loads(out.read_text())
  assert [r["law"] for r in records][0] == "kaplan" and {r["law"] for r in records} == set(fit_lib.JOINT_LAWS)
  assert records[0]["chosen"] and records[0]["determined"] and records[0]["ranking"]["mean"] < 1e-6
  assert [r["ranking"]["holdouts"] for r in records] == [["largest_x", "largest_d"]] * 4
  assert "chosen: kaplan, the best determined fit" in proc.stdout and "kaplan: L = ((N_c / X)" in proc.stdout
  expected = ((1e5 / 5e6) ** (0.3 / 0.4) + 200.0 / 1000.0) ** 0.4
  assert f"prediction at x=5e+06, d=1000: L = {expected:.4g}  (kaplan law)" in proc.stdout
  assert [line for line in proc.stderr.splitlines() if "validated range" in line] == [
    "warning: x=3e+07 lies beyond the validated range: 3x the largest x validated (1e+07); the kaplan law was "
    "never checked this far"
  ]


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
