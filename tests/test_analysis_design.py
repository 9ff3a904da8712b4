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
from scaling import grid, kinds, laws, results
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
  first, variance = design.plan(RECTIFIED, theta, problem, bought, left)
  assert problem.cost[first] >= 102_400  # Not one of the cheap runs ...
  narrowing = design.replay(
    RECTIFIED, problem, "narrowing", np.flatnonzero(bought), 0.2 * problem.cost.sum(), theta, seed=0
  )
  assert narrowing[10] and problem.cost[10] == 204_800  # ... and the plan's runs include the largest affordable.
  jac = design.jacobians(RECTIFIED, theta, problem.z)
  g = design.jacobians(RECTIFIED, theta, problem.z_target).mean(0)
  cheap = bought | (problem.cost <= 102_400)  # What cheapest-first buys: every run up to 102,400.
  assert problem.cost[cheap & ~bought].sum() <= left
  assert variance < g @ design.posterior(jac[cheap]) @ g


def test_a_simulation_has_a_row_per_replay_and_fitting_every_run_recovers_the_law():
  rows = design.simulate(RECTIFIED, [_curve()], budget=0.2, repeats=2, strategies=("narrowing", "cheapest"))
  assert list(rows["strategy"]) == ["narrowing", "cheapest"] * 2 and set(rows["repeat"]) == {0, 1}
  assert (rows["spent"] <= 0.2).all() and (rows["all"] < 1e-4).all()  # Noise-free: every run gives the law back.
  table = design.summary(rows)
  assert set(table.index) == {"narrowing", "cheapest", "all runs"}
  assert (rows["error"] < 1e-4).all()  # Noise-free, so the runs bought give the law back too.
  assert table.loc["all runs", "x all runs"] == 1.0


def test_cli_simulates_on_a_lin_csv(tmp_path, capsys):
  source = tmp_path / "flan.csv"
  lin.main(["--source", "tests/fixtures/lin", "--dataset", "flan", "--out", str(source)])
  frame = pd.read_csv(source)
  frame[frame["model"] == "gpt2"].to_csv(source, index=False)  # One curve: test time.
  capsys.readouterr()
  design.main(
    [
      "--simulate",
      "lin",
      "--source",
      str(source),
      "--law",
      "single",
      "--repeats",
      "1",
      "--out",
      str(tmp_path / "r.csv"),
    ]
  )
  out = capsys.readouterr().out
  assert "all runs" in out and all(s in out for s in design.STRATEGIES)
  rows = pd.read_csv(tmp_path / "r.csv")
  assert list(rows["strategy"]) == list(design.STRATEGIES) and set(rows["problem"]) == {"gpt2"}


VOCAB = 300


def _study_workdir(workdir) -> tuple[dict, list]:
  """A planned study of three bases at three D_f in `workdir`, with the two smaller bases and four of their
  fine-tunes finished (losses from a multiplicative law); returns (overrides, runs)."""
  overrides = {"model.sizes": ("d32l2", "d48l2", "d64l2"), "finetune.d_f": (16, 32, 64)}
  study = study_lib.validate(tiny_study(**overrides), 8)
  runs = kinds.expand(study)
  plan.write_plan(study, runs, workdir)
  finished = ("pt-d32l2", "pt-d48l2", "ft-d32l2-qa-full-df16", "ft-d32l2-qa-full-df32", "ft-d32l2-qa-full-df64")
  finished += ("ft-d48l2-qa-full-df16",)
  for r in runs:
    if grid.run_label(r.id).startswith(finished):
      cfg = model_lib.ladder_config(r.config["size"], VOCAB, **r.config["block"])
      n, d_f = model_lib.non_embedding_params(cfg), r.config.get("d_f") or 1
      record = {
        "flops_per_token": model_lib.train_flops_per_token(cfg, r.config["train"]["seq_len"]),
        "metrics": {"test_loss": 30 * n**-0.3 * d_f**-0.2 + 1.0},
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
  additive = design.propose(tmp_path, everything, law="additive")
  assert additive.law == "additive" and len(additive.runs) == len(open_tunes)
  with pytest.raises(ValueError, match=r"law 'rectified' takes inputs \('d',\); allowed: a joint law over x and d"):
    design.propose(tmp_path, everything, law="rectified")


def test_the_override_runs_the_proposed_runs_and_the_bases_they_need(tmp_path, capsys):
  overrides, runs = _study_workdir(tmp_path)
  design.main(["--workdir", str(tmp_path), "--budget", "1e12", "--config", "study.py"])
  out = capsys.readouterr().out
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


@pytest.mark.parametrize(
  "change, message",
  [
    ({"y": "nope"}, "column 'nope' is not in the table"),
    ({"law": "single"}, "law 'single' takes inputs"),
    ({"table": "all run"}, "must have losses (the runs done) and blanks"),
  ],
)
def test_a_table_that_cannot_be_chosen_from_is_refused(change, message):
  table = _table()
  if change.get("table"):
    table = table.assign(loss=1.0)
  with pytest.raises(ValueError, match=re.escape(message)):
    design.propose_rows(table, "N", "D", change.get("y", "loss"), 1e11, law=change.get("law", "multiplicative"))


def test_cli_proposes_a_tables_runs(tmp_path, capsys):
  _table().to_csv(tmp_path / "runs.csv", index=False)
  design.main(["--csv", str(tmp_path / "runs.csv"), "--x", "N", "--d", "D", "--y", "loss", "--budget", "3e11"])
  out = capsys.readouterr().out
  assert out.startswith("the target's spread in log loss now: ") and "spread after" in out
  design.main(["--csv", str(tmp_path / "runs.csv"), "--x", "N", "--d", "D", "--y", "loss", "--budget", "1"])
  assert "no run fits the budget" in capsys.readouterr().out
