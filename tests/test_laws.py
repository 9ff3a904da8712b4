"""The fitter recovers known laws: exactly from noise-free points, closely from noisy ones."""

import warnings

import numpy as np
import pytest

from scaling import laws

# Designs: 8 x 8 points over three decades each for joint laws, 40 over five for single-factor ones.
N = np.geomspace(1e4, 1e7, 8)
D = np.geomspace(50, 5e4, 8)
X_GRID, D_GRID = (a.ravel() for a in np.meshgrid(N, D))
D_LINE = np.geomspace(10, 1e6, 40)

TRUE = {
  "multiplicative": ({"A": 200.0, "alpha": 0.3, "beta": 0.4, "E": 0.8}, X_GRID, D_GRID),
  "additive": ({"A": 50.0, "alpha": 0.35, "B": 30.0, "beta": 0.45, "E": 1.2}, X_GRID, D_GRID),
  "single": ({"A": 20.0, "beta": 0.5, "E": 0.9}, None, D_LINE),
  "rectified": ({"B": 40.0, "D_L": 30.0, "beta": 0.6, "E": 0.7}, None, D_LINE),
}


def _theta(law, params):
  return np.asarray([np.log(params[p.upper()]) if p in law.exp_params else params[p] for p in law.params])


@pytest.mark.parametrize("name", sorted(TRUE))
def test_noise_free_points_give_the_law_back(name):
  law = laws.get_law(name)
  params, x, d = TRUE[name]
  y = law.predict(_theta(law, params), x, d)
  fit = laws.fit(law, d, y, x=x)
  assert fit.converged
  for key, value in params.items():
    assert fit.params[key] == pytest.approx(value, rel=1e-4, abs=1e-4), key


@pytest.mark.parametrize("name", sorted(TRUE))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_noisy_points_recover_each_law(name, seed):
  """1% multiplicative noise: exponents within 0.02, E within 2%."""
  params, x, d = TRUE[name]
  law = laws.get_law(name)
  y = law.predict(_theta(law, params), x, d) * (1 + 0.01 * np.random.default_rng(seed).standard_normal(len(d)))
  fit = laws.fit(law, d, y, x=x)
  for key in ("alpha", "beta"):
    if key in params:
      assert abs(fit.params[key] - params[key]) < 0.02, key
  assert fit.params["E"] == pytest.approx(params["E"], rel=0.02)
  assert fit.num_points == len(d) and fit.num_starts == len(law.starts())


@pytest.mark.slow
def test_bootstrap_interval_covers_alpha_in_most_datasets():
  """The 90% interval of alpha covers the truth in at least 80% of 50 noisy datasets."""
  params, x, d = TRUE["multiplicative"]
  law = laws.get_law("multiplicative")
  clean = law.predict(_theta(law, params), x, d)
  covered = 0
  for seed in range(50):
    y = clean * (1 + 0.01 * np.random.default_rng(100 + seed).standard_normal(len(d)))
    fit = laws.fit(law, d, y, x=x)
    lo, hi = laws.bootstrap(law, fit, d, y, x=x, replicates=200, level=0.9, seed=seed).interval(law)["alpha"]
    covered += lo <= params["alpha"] <= hi
  assert covered >= 40, f"covered in {covered} of 50"


def test_best_start_beats_every_other_start():
  params, x, d = TRUE["multiplicative"]
  law = laws.get_law("multiplicative")
  y = law.predict(_theta(law, params), x, d) * (1 + 0.02 * np.random.default_rng(5).standard_normal(len(d)))
  starts = law.starts()
  theta, value, _ = laws.fit_many(law, starts, np.log(x)[None], np.log(d)[None], np.log(y)[None])
  fit = laws.fit(law, d, y, x=x)
  assert fit.objective == pytest.approx(np.nanmin(value), rel=1e-9)
  assert theta.shape == (1, len(starts), 4)


@pytest.mark.parametrize(
  "bad, message",
  [
    ({"y": [1.0, -1.0, 2.0, 3.0, 4.0]}, "column .y. must be positive and finite; row 1 is -1.0"),
    ({"y": [1.0, 2.0, np.nan, 3.0, 4.0]}, "column .y. must be positive and finite; row 2 is nan"),
    ({"y": [1.0, 2.0, 3.0], "d": [1.0, 2.0, 3.0], "x": [1.0, 2.0, 3.0]}, "3 points cannot determine the 4"),
  ],
)
def test_bad_points_are_rejected(bad, message):
  args = {"d": [1.0, 2.0, 3.0, 4.0, 5.0], "y": [5.0, 4.0, 3.0, 2.0, 1.5], "x": [1.0, 1.0, 2.0, 2.0, 3.0], **bad}
  with pytest.raises(ValueError, match=message):
    laws.fit("multiplicative", args["d"], args["y"], x=args["x"])


def test_unknown_law():
  with pytest.raises(ValueError, match="unknown law 'cubic'; allowed"):
    laws.get_law("cubic")


def test_natural_parameters_past_the_float_range_are_inf_without_a_warning():
  law = laws.get_law("multiplicative")
  theta = _theta(law, TRUE["multiplicative"][0])
  theta[law.params.index("a")] = 800.0  # e^800 overflows float64.
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    natural = law.natural(theta)
  assert natural["A"] == np.inf
  assert natural["alpha"] == pytest.approx(0.3) and natural["E"] == pytest.approx(0.8)


def test_bootstrap_interval_brackets_the_truth():
  params, x, d = TRUE["multiplicative"]
  law = laws.get_law("multiplicative")
  y = law.predict(_theta(law, params), x, d) * (1 + 0.01 * np.random.default_rng(0).standard_normal(len(d)))
  fit = laws.fit(law, d, y, x=x)
  boot = laws.bootstrap(law, fit, d, y, x=x, replicates=200, level=0.9)
  assert boot.thetas.shape == (200, 4)
  interval = boot.interval(law)
  for key in ("alpha", "beta", "E"):
    lo, hi = interval[key]
    assert lo < fit.params[key] < hi and lo < params[key] < hi, key
  lo, hi = boot.prediction_interval(law, x[:3], d[:3])
  assert np.all(lo < hi)


def test_validation_errors_vanish_on_noise_free_points():
  params, x, d = TRUE["multiplicative"]
  law = laws.get_law("multiplicative")
  y = law.predict(_theta(law, params), x, d)
  v = laws.validate(law, d, y, x=x, holdout="largest_x")
  assert len(v.heldout_relative_errors) == 8  # The eight D values at the largest x.
  assert v.fitted_error < 1e-6 and v.heldout_error < 1e-6 and v.loo_error < 1e-6


def test_validation_sees_a_wrong_law():
  # A curve with a flat pre-power phase: the rectified law extrapolates it, the plain power law cannot.
  params, _, d = TRUE["rectified"]
  y = laws.get_law("rectified").predict(_theta(laws.get_law("rectified"), params), None, d)
  right = laws.validate("rectified", d, y, holdout="largest_d")
  wrong = laws.validate("single", d, y, holdout="largest_d")
  assert right.heldout_error < 1e-5 < wrong.heldout_error


def test_large_huber_delta_is_least_squares():
  params, x, d = TRUE["single"]
  law = laws.get_law("single")
  y = law.predict(_theta(law, params), None, d) * (1 + 0.02 * np.random.default_rng(1).standard_normal(len(d)))
  fit = laws.fit(law, d, y, delta=10.0)
  residual = np.log(law.predict(fit.theta, None, d)) - np.log(y)
  assert fit.objective == pytest.approx(0.5 * float(np.sum(np.asarray(residual) ** 2)), rel=1e-9)
