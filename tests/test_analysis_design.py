"""Choosing runs for a budget: each strategy's purchases, the narrowing plan, and the simulation's table."""

import ast
import re
import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_study

from analysis import design, lin
from launch import plan
from scaling import grid, kinds, laws, methods, results
from scaling import model as model_lib
from scaling import study as study_lib

RECTIFIED = laws.get_law("rectified")
THETA = np.array([2.0, 3.0, 0.5, np.log(1.5)])  # B = e^2, D_l = e^3, beta 0.5, E 1.5.


def _curve(sizes: int = 13) -> design.Problem:
  """A noise-free rectified curve over doubling D (cost D), its next size the target."""
  d = 200.0 * 2.0 ** np.arange(sizes + 1)
  y = RECTIFIED.predict(THETA, None, d)
  return design.Problem("curve", RECTIFIED.stack(d=d[:-1]), d[:-1], y[:-1], RECTIFIED.stack(d=d[-1:]), y[-1:])


@pytest.fixture(autouse=True)
def _quiet():
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # Fits to a few runs may end off the starting grid.
    yield


@pytest.mark.parametrize("strategy", list(design.STRATEGIES))
def test_each_strategy_buys_new_runs_until_none_is_affordable_and_stays_in_budget(strategy):
  problem = _curve()
  start = np.array([0, 1, 2, 3])
  budget = 0.2 * problem.cost.sum()
  theta = design.fit_theta(RECTIFIED, problem, np.isin(np.arange(13), start), RECTIFIED.starts())
  bought = design.replay(RECTIFIED, problem, strategy, start, budget, theta, seed=0)
  assert bought[start].all() and bought.sum() > len(start)
  spent = problem.cost[bought].sum()
  assert spent <= budget
  assert (problem.cost[~bought] > budget - spent).all()  # Nothing affordable was left unbought.


def test_the_plan_spends_on_a_far_run_where_cheap_runs_would_leave_too_little():
  """Per unit of cost, the cheapest runs narrow the target most; the plan sees that buying them leaves no budget
  for the run nearest the target, which narrows it more in all."""
  problem = _curve()
  bought = np.isin(np.arange(13), [0, 1, 2, 3])
  theta = design.fit_theta(RECTIFIED, problem, bought, RECTIFIED.starts())
  left = 0.2 * problem.cost.sum() - problem.cost[bought].sum()
  linear = design.linearise(RECTIFIED, theta, problem, bought)
  first, variance = design.plan(linear, problem.cost, bought, left)
  assert problem.cost[first] >= 102_400  # Not one of the cheap runs ...
  narrowing = design.replay(
    RECTIFIED, problem, "narrowing", np.flatnonzero(bought), 0.2 * problem.cost.sum(), theta, seed=0
  )
  assert narrowing[10] and problem.cost[10] == 204_800  # ... and the plan's runs include the largest affordable.
  cheap = bought | (problem.cost <= 102_400)  # What cheapest-first buys: every run up to 102,400.
  assert problem.cost[cheap & ~bought].sum() <= left
  assert variance < linear.variance(cheap)


def test_a_simulation_has_a_row_per_replay_and_fitting_every_run_recovers_the_law():
  rows = design.simulate(RECTIFIED, [_curve()], budget=0.2, repeats=2, strategies=("narrowing", "cheapest"))
  assert list(rows["strategy"]) == ["narrowing", "cheapest"] * 2 and set(rows["repeat"]) == {0, 1}
  assert (rows["spent"] <= 0.2).all() and (rows["all"] < 1e-4).all()  # Noise-free: every run gives the law back.
  table = design.summary(rows)
  assert set(table.index) == {"narrowing", "cheapest", "all runs"}
  assert (rows["error"] < 1e-4).all()  # Noise-free, so the runs bought give the law back too.
  assert table.loc["all runs", "x all runs"] == 1.0


def test_cli_simulates_every_csv_at_every_fraction_in_one_table(tmp_path, capsys):
  source = tmp_path / "flan.csv"
  lin.main(["--source", "tests/fixtures/lin", "--dataset", "flan", "--out", str(source)])
  frame = pd.read_csv(source)
  frame[frame["model"] == "gpt2"].to_csv(source, index=False)  # One curve: test time.
  capsys.readouterr()
  argv = ["--simulate", str(source), "--fraction", "0.2", "0.1", "--law", "single", "--repeats", "1"]
  design.main([*argv, "--out", str(tmp_path / "r.csv")])
  out = capsys.readouterr().out.splitlines()
  assert out[0] == "| data | fraction | all runs | " + " | ".join(design.STRATEGIES) + " |"
  assert [line.split(" | ")[:2] for line in out[2:]] == [["| Lin et al., flan (1 curves)", f] for f in ("20%", "10%")]
  assert all(line.count("x)") == len(design.STRATEGIES) and "**" in line for line in out[2:])
  rows = pd.read_csv(tmp_path / "r.csv")
  assert list(rows["strategy"]) == list(design.STRATEGIES) * 2 and set(rows["problem"]) == {"gpt2"}
  assert list(rows["fraction"]) == [0.2] * 5 + [0.1] * 5 and (rows["spent"] <= rows["fraction"]).all()


def test_published_csvs_are_told_apart_by_their_columns():
  runs = pd.DataFrame({"family": "f", "N": [1e7, 1e7, 1e8, 1e9], "D": [1e9, 2e9, 2e9, 2e10], "loss": [4, 3.9, 3.5, 3]})
  label, law, problems = design.source_problems(runs)
  assert (label, law.name, len(problems)) == ("ColPret, f", "overtrained", 1)
  assert len(problems[0].cost) == 3 and np.allclose(problems[0].cost, 6 * runs["N"][:3] * runs["D"][:3])
  with pytest.raises(ValueError, match=r"columns \['family', 'N', 'loss'\]; allowed: one of analysis.lin"):
    design.source_problems(runs.drop(columns="D"))


@pytest.mark.parametrize(
  "argv, message",
  [
    (["--simulate", "missing.csv"], "--simulate missing.csv: no such file"),
    (["--simulate", "x.csv", "--fraction", "0"], "--fraction=0.0; allowed: in \\(0, 1\\]"),
    (["--simulate", "x.csv", "--repeats", "0"], "--repeats=0; allowed: 1 or more"),
  ],
)
def test_cli_refuses_a_simulation_it_cannot_run(argv, message, capsys):
  with pytest.raises(SystemExit) as exited:
    design.main(argv)
  assert re.search(message, f"{exited.value.code} {capsys.readouterr().err}")


VOCAB = 300


def _study_workdir(workdir, **extra) -> tuple[dict, list]:
  """A planned study of three bases at three D_f in `workdir`, with the two smaller bases and four fine-tunes of each
  method and pretraining length finished (d32l2 at every D_f, d48l2 at the least; losses from a multiplicative law,
  A doubled for a second method, plus 5 / sqrt(pretraining steps)); returns (overrides, runs)."""
  overrides = {"model.sizes": ("d32l2", "d48l2", "d64l2"), "finetune.d_f": (16, 32, 64), **extra}
  study = study_lib.validate(tiny_study(**overrides), 8)
  runs = kinds.expand(study)
  plan.write_plan(study, runs, workdir)
  by_id = {r.id: r for r in runs}
  for r in runs:
    size, d_f = r.config["size"], r.config.get("d_f")
    if size == "d32l2" or (size == "d48l2" and d_f in (None, 16)):
      cfg = model_lib.ladder_config(size, VOCAB, **r.config["block"])
      n = model_lib.non_embedding_params(cfg)
      a = 30 if r.kind == "pretrain" or methods.label(r.config["method"]) == "full" else 60
      steps = (r if r.kind == "pretrain" else by_id[r.deps[0]]).config["train"]["max_steps"]
      record = {
        "flops_per_token": model_lib.train_flops_per_token(cfg, r.config["train"]["seq_len"]),
        "metrics": {"test_loss": a * n**-0.3 * (d_f or 1) ** -0.2 + 1.0 + 5 / np.sqrt(steps)},
      }
      results.write_json(workdir / "runs" / r.id / "result.json", record)
  return overrides, runs


def test_proposals_are_unfinished_runs_within_the_budget_and_price_a_new_base_once(tmp_path):
  overrides, runs = _study_workdir(tmp_path)
  done = {r.id for r in runs if (tmp_path / "runs" / r.id / "result.json").exists()}
  open_tunes = [r for r in runs if r.kind == "finetune" and r.id not in done]
  pretrain_d64 = next(r for r in runs if grid.run_label(r.id).startswith("pt-d64l2"))
  everything = sum(design.train_flops(r, VOCAB) for r in open_tunes) + design.train_flops(pretrain_d64, VOCAB)
  for budget in (0.3 * everything, everything):
    proposal = design.propose(tmp_path, budget)
    ids = [r.id for r in proposal.runs]
    assert ids and not set(ids) & done and len(set(ids)) == len(ids) and set(ids) <= {r.id for r in open_tunes}
    assert sum(proposal.costs) <= budget
    assert proposal.spread_after == sorted(proposal.spread_after, reverse=True)
    assert proposal.spread_after[-1] < proposal.spread_before
  assert len(proposal.runs) == len(open_tunes)  # With enough budget for all of them, all of them.
  d64 = [c for r, c in zip(proposal.runs, proposal.costs) if r.config["size"] == "d64l2"]
  alone = design.train_flops(next(r for r in proposal.runs if r.config["size"] == "d64l2"), VOCAB)
  assert d64[0] == pytest.approx(alone + design.train_flops(pretrain_d64, VOCAB))  # The base with the first.
  assert d64[1:] == pytest.approx([alone] * (len(d64) - 1))
  assert proposal.target == {  # The grid's largest base at its largest D_f.
    "x": pytest.approx(model_lib.non_embedding_params(model_lib.ladder_config("d64l2", VOCAB))),
    "d": 64,
  }
  assert design.propose(tmp_path, 1.0).runs == []  # Nothing is that cheap.
  beta = design.propose(tmp_path, 0.3 * everything, target="beta")
  assert beta.target == "beta" and beta.runs and beta.spread_after[-1] < beta.spread_before
  with pytest.raises(ValueError, match=r"--target 'b'; allowed: N,D_f or a parameter of the multiplicative law \(A,"):
    design.propose(tmp_path, everything, target="b")
  additive = design.propose(tmp_path, everything, law="additive")
  assert additive.law == "additive" and len(additive.runs) == len(open_tunes)
  with pytest.raises(ValueError, match=r"law 'rectified' takes inputs \('d',\); allowed: a joint law over x and d"):
    design.propose(tmp_path, everything, law="rectified")


def test_every_method_is_a_cell_with_its_own_law_and_a_base_is_priced_once_for_all(tmp_path):
  _, runs = _study_workdir(tmp_path, **{"finetune.methods": ("full", {"name": "lora", "rank": 4})})
  tunes = [r for r in runs if r.kind == "finetune"]
  done = {r.id for r in runs if (tmp_path / "runs" / r.id / "result.json").exists()}
  pretrain_d64 = next(r for r in runs if grid.run_label(r.id).startswith("pt-d64l2"))
  everything = sum(design.train_flops(r, VOCAB) for r in tunes if r.id not in done)
  proposal = design.propose(tmp_path, everything + design.train_flops(pretrain_d64, VOCAB), method="all")
  assert proposal.cells == ["qa/full", "qa/lora-rank4"]
  assert {r.id for r in proposal.runs} == {r.id for r in tunes if r.id not in done}  # Both methods' open runs.
  d64 = [c for r, c in zip(proposal.runs, proposal.costs) if r.config["size"] == "d64l2"]
  assert d64[0] > max(d64[1:]) and sum(proposal.costs) == pytest.approx(
    everything + design.train_flops(pretrain_d64, VOCAB)
  )
  one = design.propose(tmp_path, everything, method="lora-rank4")
  assert one.cells == ["qa/lora-rank4"] and {methods.label(r.config["method"]) for r in one.runs} == {"lora-rank4"}
  assert proposal.spread_before > one.spread_before  # Two cells' variances add up.
  with pytest.raises(ValueError, match=r"no fine-tunes of task 'qa' with method 'svf'; allowed: \[\('qa', 'full'\)"):
    design.propose(tmp_path, everything, method="svf")


def test_a_law_over_n_or_d_p_proposes_the_runs_of_the_slice_the_study_fits(tmp_path):
  """Bases at two pretraining lengths: over N, the runs of the longer one (both have two sizes finished: ties go to
  the largest); over D_p, the runs of d48l2 (as many lengths finished as d32l2, and larger)."""
  _, runs = _study_workdir(tmp_path, **{"pretrain.steps": (10, 20)})
  by_id = {r.id: r for r in runs}
  steps = lambda r: by_id[r.deps[0]].config["train"]["max_steps"]  # noqa: E731
  over_n = design.propose(tmp_path, 1e15)
  assert over_n.runs and {steps(r) for r in over_n.runs} == {20} and over_n.axis == "non_embedding_params"
  assert {r.config["size"] for r in over_n.runs} == {"d48l2", "d64l2"}
  over_dp = design.propose(tmp_path, 1e15, axis="pretrain_tokens")
  assert {(r.config["size"], steps(r), r.config["d_f"]) for r in over_dp.runs} == {
    ("d48l2", s, d_f) for s in (10, 20) for d_f in (32, 64)
  }
  tokens = 20 * 8 * 48  # The longer base's max_steps full batches of tiny_study's pretraining.
  assert over_dp.target == {"x": tokens, "d": 64} and sum(over_dp.costs) < sum(over_n.costs)
  with pytest.raises(ValueError, match=r"--x 'trainable_params'; allowed: one of \['non_embedding_params', 'pretrain"):
    design.propose(tmp_path, 1e15, axis="trainable_params")


def test_independent_laws_combine_into_the_sum_of_their_targets_variances():
  rng = np.random.default_rng(0)
  parts = [design.Linear(rng.normal(size=(n, p)), rng.normal(size=p), np.full(n, 0.1)) for n, p in ((5, 3), (4, 2))]
  both = design.combine(parts)
  chosen = np.array([1, 0, 1, 1, 0, 0, 1, 1, 0], bool)
  assert both.jac.shape == (9, 5) and not both.jac[:5, 3:].any() and not both.jac[5:, :3].any()
  assert both.variance(chosen) == pytest.approx(parts[0].variance(chosen[:5]) + parts[1].variance(chosen[5:]))


def test_the_override_runs_the_proposed_runs_and_the_bases_they_need(tmp_path, capsys):
  overrides, runs = _study_workdir(tmp_path)
  design.main(["--workdir", str(tmp_path), "--budget", "1e12", "--config", "study.py"])
  out = capsys.readouterr().out
  assert out.startswith("qa/full, the multiplicative law: the spread of the prediction at N=")
  flags = (tmp_path / "design" / "next.flags").read_text()
  assert f"--workdir {tmp_path} --flagfile {tmp_path / 'design' / 'next.flags'}" in out
  name, value = flags.strip().split("=", 1)
  assert name == "--config.only"
  labels = ast.literal_eval(value)
  assert all(label in out for label in labels)
  chosen = kinds.expand(study_lib.validate(tiny_study(**overrides, only=labels), 8))
  assert {grid.run_label(r.id) for r in chosen if r.kind == "finetune"} == set(labels)
  assert {r.id for r in chosen if r.kind == "pretrain"} == {d for r in chosen for d in r.deps}


def test_cli_refuses_a_workdir_without_a_budget_or_study(tmp_path):
  with pytest.raises(SystemExit, match="no study.json"):
    design.main(["--workdir", str(tmp_path), "--budget", "1e12"])
  with pytest.raises(SystemExit):
    design.main(["--workdir", str(tmp_path)])


def _table() -> pd.DataFrame:
  """4 x by 5 d of a multiplicative law; the runs above 2e6 in x or 3,000 in d not yet run (no loss)."""
  x, d = (a.ravel() for a in np.meshgrid(np.geomspace(1e5, 1e7, 4), np.geomspace(100, 1e4, 5)))
  loss = 30 * x**-0.3 * d**-0.2 + 1.0
  return pd.DataFrame(
    {"N": x, "D": d, "loss": np.where((x > 2e6) | (d > 3000), np.nan, loss), "gpu_hours": x * d / 1e9}
  )


def test_a_tables_rows_without_a_loss_are_proposed_within_the_budget():
  table = _table()
  for cost, budget in ((None, 3e11), ("gpu_hours", 60.0)):
    chosen = design.propose_rows(table, "N", "D", "loss", budget, cost=cost)
    assert len(chosen) and chosen["loss"].isna().all() and chosen.index.is_unique
    expected = 6 * chosen["N"] * chosen["D"] if cost is None else chosen[cost]
    assert chosen["cost"].to_numpy() == pytest.approx(expected.to_numpy())
    assert chosen["cost"].sum() <= budget
    left = budget - chosen["cost"].sum()
    others = table[table["loss"].isna()].drop(chosen.index)
    assert ((6 * others["N"] * others["D"] if cost is None else others[cost]) > left).all()  # Nothing affordable left.
    assert list(chosen["spread after"]) == sorted(chosen["spread after"], reverse=True)
    assert chosen["spread after"].iloc[-1] < chosen.attrs["spread before"]


def test_a_parameter_target_buys_the_runs_that_pin_that_parameter():
  """Two runs of equal cost: alpha's buy spans a new size at the least data, beta's new data at the smallest size,
  and the prediction at the largest of both buys neither (both its runs are near it)."""
  table = _table().assign(one=1.0)
  done = table["loss"].notna()
  spans = lambda chosen, new, old: (
    (chosen[new] > table.loc[done, new].max()) & (chosen[old] == table[old].min())
  ).any()  # noqa: E731
  picks = {t: design.propose_rows(table, "N", "D", "loss", 2.0, cost="one", target=t) for t in ("alpha", "beta", None)}
  assert spans(picks["alpha"], "N", "D") and spans(picks["beta"], "D", "N")
  assert not spans(picks[None], "N", "D") and not spans(picks[None], "D", "N")
  for target, chosen in picks.items():
    assert len(chosen) == 2 and chosen.attrs["target"] == (target or {"x": 1e7, "d": 1e4})
    assert chosen["spread after"].iloc[-1] < chosen.attrs["spread before"]
  assert picks["alpha"].attrs["spread before"] != picks["beta"].attrs["spread before"]


@pytest.mark.parametrize(
  "change, message",
  [
    ({"y": "nope"}, "column 'nope' is not in the table"),
    ({"law": "single"}, "law 'single' takes inputs"),
    ({"table": "all run"}, "must have losses (the runs done) and blanks"),
    (
      {"target": "gamma"},
      "--target 'gamma'; allowed: N,D_f or a parameter of the multiplicative law (A, alpha, beta, E)",
    ),
  ],
)
def test_a_table_that_cannot_be_chosen_from_is_refused(change, message):
  table = _table()
  if change.get("table"):
    table = table.assign(loss=1.0)
  with pytest.raises(ValueError, match=re.escape(message)):
    law, target = change.get("law", "multiplicative"), change.get("target")
    design.propose_rows(table, "N", "D", change.get("y", "loss"), 1e11, law=law, target=target)


def test_cli_proposes_a_tables_runs(tmp_path, capsys):
  _table().to_csv(tmp_path / "runs.csv", index=False)
  design.main(["--csv", str(tmp_path / "runs.csv"), "--x", "N", "--d", "D", "--y", "loss", "--budget", "3e11"])
  out = capsys.readouterr().out
  assert (
    out.startswith("the spread of the prediction at N=1e+07, D=1e+04 (in log loss) now: ") and "spread after" in out
  )
  design.main(
    ["--csv", str(tmp_path / "runs.csv"), "--x", "N", "--d", "D", "--y", "loss", "--budget", "3e11", "--target", "E"]
  )
  assert capsys.readouterr().out.startswith("the spread of log E now: ")
  design.main(["--csv", str(tmp_path / "runs.csv"), "--x", "N", "--d", "D", "--y", "loss", "--budget", "1"])
  assert "no run fits the budget" in capsys.readouterr().out
