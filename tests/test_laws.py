"""The fitter recovers known laws: exactly from noise-free points, closely from noisy ones; it says which
parameters its points do not determine, and how far a fit was validated."""

import dataclasses
import warnings

import numpy as np
import pytest
from scipy import optimize

from scaling import laws

# Designs: 8 x 8 points over three decades each for joint laws, 40 over five for single-factor ones; for the
# data-constrained law, 4 sizes x 2 unique-data sizes x 8 data sizes from half an epoch to 64 epochs.
N = np.geomspace(1e4, 1e7, 8)
D = np.geomspace(50, 5e4, 8)
X_GRID, D_GRID = (a.ravel() for a in np.meshgrid(N, D))
D_LINE = np.geomspace(10, 1e6, 40)
_N4, _U, _EPOCHS = (a.ravel() for a in np.meshgrid(np.geomspace(1e4, 1e7, 4), [1e3, 1e4], 2.0 ** np.arange(-1, 7)))
JOINT, LINE, REPEATED = {"x": X_GRID, "d": D_GRID}, {"d": D_LINE}, {"x": _N4, "d": _U * _EPOCHS, "u": _U}

TRUE = {  # Every law of the zoo: its parameters and the inputs of its points.
  "multiplicative": ({"A": 200.0, "alpha": 0.3, "beta": 0.4, "E": 0.8}, JOINT),
  "additive": ({"A": 50.0, "alpha": 0.35, "B": 30.0, "beta": 0.45, "E": 1.2}, JOINT),
  "single": ({"A": 20.0, "beta": 0.5, "E": 0.9}, LINE),
  "rectified": ({"B": 40.0, "D_L": 30.0, "beta": 0.6, "E": 0.7}, LINE),
  "overtrained": ({"A": 200.0, "B": 30.0, "eta": 0.2, "E": 1.0}, JOINT),
  "kaplan": ({"N_C": 1e5, "alpha_n": 0.3, "D_C": 200.0, "alpha_d": 0.4}, JOINT),
  "data_constrained": ({"A": 50.0, "alpha": 0.35, "B": 30.0, "beta": 0.45, "E": 1.2, "R_D": 15.0}, REPEATED),
  "broken": ({"A": 20.0, "c0": 0.1, "c1": 0.5, "D_1": 1000.0, "F": 0.5, "E": 0.5}, LINE),
}


def _theta(law, params):
  return np.asarray([np.log(params[p.upper()]) if p in law.exp_params else params[p] for p in law.params])


def _points(name, noise=0.0, seed=0):
  """The law's inputs and its losses there, times (1 + noise * a standard normal)."""
  law = laws.get_law(name)
  params, inputs = TRUE[name]
  y = law.predict(_theta(law, params), **{"x": None, **inputs})
  return inputs, y * (1 + noise * np.random.default_rng(seed).standard_normal(len(y)))


def test_every_law_is_tested():
  assert set(TRUE) == set(laws.LAWS)


@pytest.mark.parametrize("name", sorted(TRUE))
def test_noise_free_points_give_the_law_back(name):
  inputs, y = _points(name)
  fit = laws.fit(name, y=y, **inputs)
  assert fit.converged
  for key, value in TRUE[name][0].items():
    assert fit.params[key] == pytest.approx(value, rel=1e-4, abs=1e-4), key


# The zoo's published forms, written out in natural parameters as their papers give them.
PUBLISHED = {
  "overtrained": lambda p, x, d, u: (
    p["E"] + (p["A"] * (d / x) ** p["eta"] + p["B"] * (d / x) ** -p["eta"]) * (6 * x * d) ** -p["eta"]
  ),
  "kaplan": lambda p, x, d, u: ((p["N_C"] / x) ** (p["alpha_n"] / p["alpha_d"]) + p["D_C"] / d) ** p["alpha_d"],
  "data_constrained": lambda p, x, d, u: (
    p["E"] + p["A"] / x ** p["alpha"] + p["B"] / (u + u * p["R_D"] * (1 - np.exp(-(d / u - 1) / p["R_D"]))) ** p["beta"]
  ),
  "broken": lambda p, x, d, u: (
    p["E"] + p["A"] * d ** -p["c0"] * (1 + (d / p["D_1"]) ** (1 / p["F"])) ** (-p["c1"] * p["F"])
  ),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_zoo_laws_compute_their_published_forms(name):
  """At every point of the law's design; where d < u (REPEATED's half epochs) the unique data seen is d."""
  law = laws.get_law(name)
  params, inputs = TRUE[name]
  x, d, u = (inputs.get(k) for k in ("x", "d", "u"))
  expected = PUBLISHED[name](params, x, d, None if u is None else np.minimum(u, d))
  assert law.predict(_theta(law, params), x, d, u) == pytest.approx(expected, rel=1e-12)


def test_data_constrained_law_is_the_additive_one_without_repeats():
  """One epoch or less: D' = D. Repeats are worth something, less than fresh data, and at most U * (1 + R_D)."""
  params = TRUE["data_constrained"][0]
  dc, add = laws.get_law("data_constrained"), laws.get_law("additive")
  theta_dc, theta_add = _theta(dc, params), _theta(add, params)
  x, d, u = np.full(3, 1e6), np.asarray([100.0, 500.0, 1000.0]), np.full(3, 1000.0)
  assert dc.predict(theta_dc, x, d, u) == pytest.approx(add.predict(theta_add, x, d), rel=1e-12)
  four_epochs = dc.predict(theta_dc, x[:1], np.asarray([4000.0]), u[:1])
  assert add.predict(theta_add, x[:1], np.asarray([4000.0])) < four_epochs < add.predict(theta_add, x[:1], u[:1])
  endless = dc.predict(theta_dc, x[:1], np.asarray([1e9]), u[:1])
  assert endless == pytest.approx(add.predict(theta_add, x[:1], np.asarray([1000.0 * (1 + params["R_D"])])), rel=1e-12)


def test_a_law_without_its_unique_data_names_the_missing_input():
  inputs, y = _points("data_constrained")
  with pytest.raises(ValueError, match=r"takes inputs \('x', 'd', 'u'\); u \(the unique data\) is missing"):
    laws.fit("data_constrained", inputs["d"], y, x=inputs["x"])
  with pytest.raises(ValueError, match=r"law 'single' takes inputs \('d',\); u \(the unique data\) was given"):
    laws.fit("single", inputs["d"], y, u=inputs["u"])


@pytest.mark.parametrize("name", ["multiplicative", "additive", "single", "rectified"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_noisy_points_recover_each_law(name, seed):
  """1% multiplicative noise: exponents within 0.02, E within 2%."""
  params = TRUE[name][0]
  law = laws.get_law(name)
  inputs, y = _points(name, 0.01, seed)
  fit = laws.fit(law, y=y, **inputs)
  for key in ("alpha", "beta"):
    if key in params:
      assert abs(fit.params[key] - params[key]) < 0.02, key
  assert fit.params["E"] == pytest.approx(params["E"], rel=0.02)
  assert fit.num_points == len(y) and fit.num_starts == len(law.starts())


@pytest.mark.slow
def test_bootstrap_interval_covers_alpha_in_most_datasets(monkeypatch):
  """The 90% interval of alpha covers the truth in at least 80% of 50 noisy datasets."""
  law = laws.get_law("multiplicative")
  datasets = [_points("multiplicative", 0.01, 100 + seed) for seed in range(50)]
  # The 50 searches from the law's grid as one vectorised call, whose rows are what a call for each dataset
  # returns (its lanes do not interact); each laws.fit below gets its dataset's rows instead of searching again.
  z = law.stack(**JOINT)
  searches = laws.fit_many(law, law.starts(), z, np.log([y for _, y in datasets]))

  def searched(law_, starts, z_, log_y, weights, delta):
    assert law_ is law and np.array_equal(starts, law.starts()) and np.array_equal(z_, z) and weights is None
    assert delta == 1e-3  # laws.fit's default, as in the searches.
    [row] = [i for i, (_, y) in enumerate(datasets) if np.array_equal(log_y, np.log(y))]
    return tuple(a[row : row + 1] for a in searches)

  covered = 0
  for seed, (inputs, y) in enumerate(datasets):
    with monkeypatch.context() as m:
      m.setattr(laws, "fit_many", searched)
      fit = laws.fit(law, y=y, **inputs)
    lo, hi = laws.bootstrap(law, fit, y=y, replicates=200, level=0.9, seed=seed, **inputs).interval(law)["alpha"]
    covered += lo <= TRUE["multiplicative"][0]["alpha"] <= hi
  assert covered >= 40, f"covered in {covered} of 50"


def test_best_start_beats_every_other_start():
  law = laws.get_law("multiplicative")
  inputs, y = _points("multiplicative", 0.02, 5)
  starts = law.starts()
  theta, value, _ = laws.fit_many(law, starts, law.stack(**inputs)[None], np.log(y)[None])
  fit = laws.fit(law, y=y, **inputs)
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
  params = TRUE["multiplicative"][0]
  law = laws.get_law("multiplicative")
  inputs, y = _points("multiplicative", 0.01)
  fit = laws.fit(law, y=y, **inputs)
  boot = laws.bootstrap(law, fit, y=y, replicates=200, level=0.9, **inputs)
  assert boot.thetas.shape == (200, 4)
  interval = boot.interval(law)
  for key in ("alpha", "beta", "E"):
    lo, hi = interval[key]
    assert lo < fit.params[key] < hi and lo < params[key] < hi, key
  lo, hi = boot.prediction_interval(law, inputs["x"][:3], inputs["d"][:3])
  assert np.all(lo < hi)


def test_validation_errors_vanish_on_noise_free_points_and_it_says_how_far_it_reached():
  inputs, y = _points("multiplicative")
  v = laws.validate("multiplicative", y=y, holdout="largest_x", **inputs)
  assert len(v.heldout_relative_errors) == 8  # The eight D values at the largest x.
  assert v.fitted_error < 1e-6 and v.heldout_error < 1e-6 and v.loo_error < 1e-6
  # Fitted to the seven smaller N over every D, validated at the largest N: N[-1] / N[-2] = 10^(3/7) beyond.
  assert v.fitted_max == {"x": pytest.approx(N[-2]), "d": pytest.approx(D[-1])} and v.fitted_values == {"x": 7, "d": 8}
  assert v.validated_max == {"x": pytest.approx(N[-1]), "d": pytest.approx(D[-1])}
  assert v.to_json()["validated_ratio"] == {"x": pytest.approx(10 ** (3 / 7)), "d": pytest.approx(1.0)}


def test_validation_sees_a_wrong_law():
  # A curve with a flat pre-power phase: the rectified law extrapolates it, the plain power law cannot.
  inputs, y = _points("rectified")
  right = laws.validate("rectified", y=y, holdout="largest_d", **inputs)
  wrong = laws.validate("single", y=y, holdout="largest_d", **inputs)
  assert right.heldout_error < 1e-5 < wrong.heldout_error


def test_large_huber_delta_is_least_squares():
  law = laws.get_law("single")
  inputs, y = _points("single", 0.02, 1)
  fit = laws.fit(law, y=y, delta=10.0, **inputs)
  residual = np.log(law.predict(fit.theta, None, inputs["d"])) - np.log(y)
  assert fit.objective == pytest.approx(0.5 * float(np.sum(np.asarray(residual) ** 2)), rel=1e-9)


def test_standard_errors_are_least_squares_ones():
  """Against scipy's curve_fit on the same log-space model: the square root of its covariance's diagonal."""
  law = laws.get_law("single")
  inputs, y = _points("single", 0.02, 1)
  fit = laws.fit(law, y=y, delta=10.0, **inputs)  # A least-squares fit.
  z = law.stack(**inputs)
  _, cov = optimize.curve_fit(
    lambda _, *theta: np.log(law.predict_logs(np.asarray(theta), z)), None, np.log(y), p0=fit.theta
  )
  assert laws.standard_errors(law, fit.theta, z, y) == pytest.approx(np.sqrt(np.diag(cov)), rel=1e-4)


def test_a_well_determined_fit_is_determined():
  law = laws.get_law("multiplicative")
  inputs, y = _points("multiplicative", 0.01)
  fit = laws.fit(law, y=y, **inputs)
  boot = laws.bootstrap(law, fit, y=y, replicates=100, **inputs)
  validation = laws.validate(law, y=y, holdout="largest_x", full=fit, **inputs)
  assert laws.undetermined(law, fit, y=y, boot=boot, validation=validation, **inputs) == {}


def test_a_vanishing_term_is_not_determined():
  """A power law without a floor: E runs to 0, far below its grid, where the points cannot tell one tiny E from
  another; A and beta stay determined."""
  y = 20.0 * D_LINE**-0.5
  with pytest.warns(UserWarning, match="outside the starting grid"):
    fit = laws.fit("single", D_LINE, y)
  reasons = laws.undetermined("single", fit, D_LINE, y)
  assert set(reasons) == {"E"} and "decades outside the starting grid" in reasons["E"]


def test_too_few_values_of_an_input_determine_nothing():
  """One x: A * x^-alpha is one number, which cannot fix A and alpha apart."""
  d = np.geomspace(10, 1e4, 64)  # As many points as JOINT: the fitter's programs for them are compiled.
  x = np.full(64, 1e5)
  y = 3.0 * d**-0.3 + 0.5
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # Off the grid, as anything may be.
    fit = laws.fit("multiplicative", d, y, x=x)
  reasons = laws.undetermined("multiplicative", fit, d, y, x=x)
  assert set(reasons) == {"A", "alpha", "beta", "E"}
  assert all("1 distinct values of x; the multiplicative law needs 2" in r for r in reasons.values())


def test_wide_bootstrap_intervals_and_a_large_leave_one_out_error_are_not_determined():
  law = laws.get_law("multiplicative")
  inputs, y = _points("multiplicative", 0.01)
  fit = laws.fit(law, y=y, **inputs)
  draws = np.tile(fit.theta, (100, 1))
  draws[:, law.params.index("beta")] += np.linspace(-1.0, 1.0, 100)  # A 90% interval 1.8 wide.
  draws[:, law.params.index("a")] += np.linspace(-5.0, 5.0, 100)  # 9 nats: 3.9 decades.
  reasons = laws.undetermined(law, fit, y=y, boot=laws.Bootstrap(draws, 0.9), **inputs)
  assert set(reasons) == {"A", "beta"} and all("90% bootstrap interval" in r for r in reasons.values())
  validation = laws.validate(law, y=y, holdout="largest_x", full=fit, **inputs)
  wild = dataclasses.replace(validation, loo_error=10 * np.ptp(y))
  reasons = laws.undetermined(law, fit, y=y, validation=wild, **inputs)
  assert set(reasons) == set(law.names) and all("leave-one-out error" in r for r in reasons.values())


def test_a_runaway_exponent_is_not_determined():
  """Kaplan's law has no floor: fitted to points with one, its alpha_d runs off (to thousands) to mimic it."""
  inputs, y = _points("multiplicative", 0.01)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    fit = laws.fit("kaplan", y=y, **inputs)
  reasons = laws.undetermined("kaplan", fit, y=y, **inputs)
  assert fit.params["alpha_d"] > 1.0 + laws.RUNAWAY and "outside the starting grid" in reasons["alpha_d"]
