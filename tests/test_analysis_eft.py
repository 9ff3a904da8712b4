"""The EFT analysis: decoupling fits tell which scale a metric follows; gap closed; report section."""

import numpy as np
import pandas as pd
import pytest
from etils import epath

from analysis import eft as eft_analysis
from analysis import fit as fit_lib

SIZES = {"s": 1e4, "m": 4e4, "l": 1.6e5, "xl": 6.4e5}


def _table(seed=0):
  """EFT runs where knowledge follows N1 and behaviour follows N2, and the real fine-tunes."""
  rng = np.random.default_rng(seed)
  rows = []
  for (a, n1), (b, n2) in ((x, y) for x in SIZES.items() for y in SIZES.items()):
    for beta in (0.5, 1.0):
      rows.append(
        {
          "kind": "eft",
          "task": "qa",
          "method": "full",
          "size": a,
          "finetune_size": b,
          "base": f"pt-{a}",
          "spec.finetune_base": f"pt-{b}",
          "non_embedding_params": n1,
          "finetune_non_embedding_params": n2,
          "d_f": 64,
          "beta": beta,
          "metrics.knowledge": 0.1 * np.log(n1) - 0.8 + 0.01 * rng.standard_normal(),
          "metrics.behaviour": 0.1 * np.log(n2) - 0.5 + 0.01 * rng.standard_normal(),
          "metrics.test_loss": 30 * n1**-0.2 + 5 * n2**-0.1 + 0.01 * rng.standard_normal(),
        }
      )
  for size, n in SIZES.items():
    rows.append(
      {
        "kind": "finetune",
        "task": "qa",
        "method": "full",
        "size": size,
        "base": f"pt-{size}",
        "non_embedding_params": n,
        "d_f": 64,
        "metrics.knowledge": 0.1 * np.log(n) - 0.8,
        "metrics.behaviour": 0.1 * np.log(n) - 0.5,
        "metrics.test_loss": 30 * n**-0.2 + 5 * n**-0.1,
      }
    )
  return pd.DataFrame(rows)


def test_decoupling_fit_tells_which_scale_each_metric_follows():
  points = eft_analysis.eft_points(_table())
  at_one = points[points["beta"] == 1.0]
  knowledge = eft_analysis.decoupling_fit(at_one, "knowledge")
  behaviour = eft_analysis.decoupling_fit(at_one, "behaviour")
  assert knowledge["coef"]["b1"] == pytest.approx(0.1, abs=0.01) and abs(knowledge["coef"]["b2"]) < 0.01
  assert knowledge["follows"] == "n1" and behaviour["follows"] == "n2"
  lo, hi = behaviour["intervals"]["b2"]
  assert lo < 0.1 < hi and knowledge["r2"] > 0.9


def test_follows_needs_an_interval_that_excludes_zero():
  assert eft_analysis.follows(0.1, 0.01, [0.05, 0.15], [-0.02, 0.04]) == "n1"
  assert eft_analysis.follows(0.1, 0.08, [0.05, 0.15], [0.02, 0.1]) == "both"
  assert eft_analysis.follows(0.01, -0.3, [-0.1, 0.1], [-0.5, -0.1]) == "n2"
  assert eft_analysis.follows(0.01, 0.02, [-0.1, 0.1], [-0.1, 0.1]) == "neither"


def test_gap_closed_against_the_real_fine_tunes():
  table = _table()
  gaps = eft_analysis.gap_closed_rows(eft_analysis.eft_points(table), eft_analysis.finetune_metrics(table))
  assert len(gaps) == 6 * 2  # Up-scaling pairs (N1 > N2) x betas.
  # Knowledge follows N1 exactly as the real fine-tunes do: EFT closes the whole gap.
  assert all(g["knowledge"] == pytest.approx(1.0, abs=0.2) for g in gaps)
  assert all(abs(g["behaviour"]) < 0.2 for g in gaps)  # Behaviour stays at the small fine-tune's.


def test_gap_closed_is_measured_against_fine_tunes_of_the_eft_bases():
  """Fine-tunes of bases at another pretraining budget (worse by a nat here) are not the EFT runs'
  references: the gaps stay as they are without them."""
  table = _table()
  other = table[table["kind"] == "finetune"].assign(
    base=lambda t: t["base"] + "-shorter", **{"metrics.test_loss": lambda t: t["metrics.test_loss"] + 1}
  )
  gaps = [
    eft_analysis.gap_closed_rows(eft_analysis.eft_points(t), eft_analysis.finetune_metrics(t))
    for t in (table, pd.concat([table, other], ignore_index=True))
  ]
  assert gaps[0] == gaps[1]


@pytest.mark.slow
def test_fit_eft_records_and_report_section(tmp_path):
  table = _table()
  records = eft_analysis.fit_eft(table, bootstrap=50)
  kinds = {r["analysis"] for r in records}
  assert kinds == {"decoupling", "gap_closed", "law"} and all(r["section"] == "eft" for r in records)
  laws = {r["x"]: r for r in records if r["analysis"] == "law"}
  assert set(laws) == {"n1", "n2"} and laws["n1"]["law"] == "single"  # One D_f: the law over X alone.
  lines = eft_analysis.report_lines(table, records, epath.Path(tmp_path))
  text = "\n".join(lines)
  for needle in (
    "## Emulated fine-tuning",
    "Which scale each metric follows",
    "Gap closed by up-scaling",
    "N1 (pretraining scale)",
    "N2 (fine-tuning scale)",
    "eft_qa_full_knowledge.png",
  ):
    assert needle in text, needle
  assert (tmp_path / "eft_qa_full_behaviour.png").stat().st_size > 10_000
  assert eft_analysis.fit_eft(table[table["kind"] != "eft"]) == []
  # A finished study prints every verdict: each metric at each beta.
  printed = [line for line in fit_lib.summary_lines(records) if line.startswith("EFT ")]
  assert len(printed) == 6
  verdicts = {line.split(": b1")[0]: line.rsplit("follows ", 1)[1] for line in printed}
  assert verdicts["EFT qa/full behaviour at beta 0.5"] == "N2 (fine-tuning scale)"
  assert verdicts["EFT qa/full knowledge at beta 1"] == "N1 (pretraining scale)"


def test_heatmaps_put_each_n1_on_a_row_and_each_n2_on_a_column(tmp_path, monkeypatch):
  """With fewer N1 than N2 (eft.pairs), every measured pair has its cell, and no cell is empty."""
  table = _table()
  table = table[(table["kind"] != "eft") | (table["size"] != "s")]  # N1 in m, l, xl; N2 in all four.
  figures = []
  monkeypatch.setattr(eft_analysis.plt, "close", figures.append)
  eft_analysis.plot_heatmaps(eft_analysis.eft_points(table), "knowledge", epath.Path(tmp_path) / "k.png")
  (fig,) = figures
  panels = fig.axes[:-1]  # The last axes is the colorbar; one D_f, two betas: one row of panels.
  assert len(panels) == 2 and [t.get_text() for t in panels[0].get_yticklabels()] == ["m", "l", "xl"]
  for ax in panels:
    assert [t.get_text() for t in ax.get_xticklabels()] == ["s", "m", "l", "xl"]
    assert len(ax.texts) == 3 * 4  # A value in every cell.
  assert (tmp_path / "k.png").stat().st_size > 10_000


def test_the_report_names_the_n1_bases_that_cannot_be_asked_zero_shot(tmp_path):
  """Only bases that are N1 of an EFT run on the task and put under half their mass on its values."""
  table = _table()
  table = table[(table["kind"] != "eft") | (table["size"] != "m")]  # m is N2 only.
  zeroshot = pd.DataFrame(
    {
      "kind": "zeroshot",
      "task": task,
      "size": size,
      "base": f"pt-{size}",
      "non_embedding_params": n,
      "metrics.value_mass": mass,
    }
    for task, masses in (("qa", {"s": 0.06, "m": 0.1, "l": 0.49, "xl": 0.9}), ("other", {"xl": 0.01}))
    for (size, n), mass in zip(SIZES.items(), masses.values())
  )
  assert eft_analysis.unaskable_n1(table, "qa") == []  # No zero-shot runs.
  assert not any(r["analysis"] == "unaskable" for r in eft_analysis.fit_eft(table, bootstrap=20))
  both = pd.concat([table, zeroshot])
  assert eft_analysis.unaskable_n1(both, "qa") == [{"size": "s", "value_mass": 0.06}, {"size": "l", "value_mass": 0.49}]
  records = eft_analysis.fit_eft(both, bootstrap=20)
  (record,) = [r for r in records if r["analysis"] == "unaskable"]
  assert record["threshold"] == eft_analysis.ASKABLE and [b["size"] for b in record["bases"]] == ["s", "l"]
  text = "\n".join(eft_analysis.report_lines(both, records, epath.Path(tmp_path)))
  assert "N1 base s can hardly be asked in the task's format: zero-shot, 6% of its first answer token's" in text
  assert "N1 base l can hardly" in text and "N1 base m" not in text and "N1 base xl" not in text
  printed = [line for line in fit_lib.summary_lines(records) if "can hardly" in line]
  assert [line.split(": N1 base ")[1].split()[0] for line in printed] == ["s", "l"]
  assert printed[0].startswith("EFT qa/full: ")


def test_a_real_task_is_fitted_on_its_generation_metrics_and_imported_fine_tunes():
  # Exact match and F1 where the world has knowledge, the format check as behaviour; the real fine-tunes
  # imported (kind finetune_checkpoint), as an instruct checkpoint is.
  table = _table().rename(columns={"metrics.knowledge": "metrics.exact_match"})
  table["metrics.f1"] = table["metrics.exact_match"] + 0.1
  table.loc[table["kind"] == "finetune", "kind"] = "finetune_checkpoint"
  records = eft_analysis.fit_eft(table)
  follows = {(r["metric"], r["beta"]): r["follows"] for r in records if r["analysis"] == "decoupling"}
  assert {m for m, _ in follows} == {"exact_match", "f1", "behaviour", "test_loss"}
  assert all(follows[(m, 1.0)] == "n1" for m in ("exact_match", "f1")) and follows[("behaviour", 1.0)] == "n2"
  [gaps] = [r for r in records if r["analysis"] == "gap_closed"]
  assert all(g["exact_match"] == pytest.approx(1.0, abs=0.2) for g in gaps["pairs"])
