"""The methods analysis: alpha_t over P recovered from a known law, the exponents side by side,
forgetting per method and D_f; nothing for a study of one method."""

import numpy as np
import pandas as pd
import pytest

from analysis import methods as methods_analysis

D_F = (16, 32, 64, 128, 256)


def _table(alpha_t=0.1, beta=0.3):
  """Fine-tune records of LoRA at four ranks (P) and full tuning, on one base; LoRA's loss follows
  L = 2 * P^-alpha_t * D_f^-beta + 1."""
  rows = []
  for method, name, p in [
    ("lora-rank2", "lora", 512),
    ("lora-rank4", "lora", 1024),
    ("lora-rank8", "lora", 2048),
    ("lora-rank16", "lora", 4096),
    ("full", "full", 60000),
  ]:
    for d_f in D_F:
      loss = 2.0 * p**-alpha_t * d_f**-beta + 1.0
      rows.append(
        {
          "id": f"{method}-{d_f}",
          "kind": "finetune",
          "task": "qa",
          "method": method,
          "spec.method.name": name,
          "size": "d32l2",
          "non_embedding_params": 25000,
          "pretrain_tokens": 1e6,
          "trainable_params": p,
          "d_f": d_f,
          "seed": 0,
          "metrics.test_loss": loss,
          "metrics.knowledge": 0.5,
          "metrics.behaviour": 0.9,
          "metrics.delta_heldout_loss": 0.1 if name == "lora" else 0.8,
          "metrics.delta_cloze_knowledge": -0.1,
        }
      )
  return pd.DataFrame(rows)


def test_the_law_over_p_gives_alpha_t_back_and_the_report_compares_methods():
  table = _table()
  fits = methods_analysis.fit_methods(table, bootstrap=20)
  assert [(f["method"], f["base"], f["x"]) for f in fits] == [("lora", "d32l2", "trainable_params")]
  assert fits[0]["section"] == "methods" and fits[0]["num_points"] == 20
  assert fits[0]["params"]["alpha"] == pytest.approx(0.1, abs=2e-3)
  assert fits[0]["params"]["beta"] == pytest.approx(0.3, abs=2e-3)
  lines = "\n".join(methods_analysis.report_lines(table, fits))
  assert "## Fine-tuning methods" in lines and "P (alpha_t)" in lines and "0.1" in lines
  forgetting = lines[lines.index("### Forgetting") :]
  assert forgetting.count("| qa | lora-rank") == 4 * len(D_F) and forgetting.count("| qa | full |") == len(D_F)
  assert "| 0.8 |" in forgetting and "| 0.1 |" in forgetting  # Full tuning forgets more here.


def test_one_method_gives_no_section():
  table = _table()
  only_full = table[table["method"] == "full"]
  assert methods_analysis.fit_methods(only_full) == [] and methods_analysis.report_lines(only_full, []) == []
  assert np.isfinite(methods_analysis.method_points(only_full)["test_loss"]).all()


def test_a_method_at_its_own_learning_rate_is_a_family_of_its_own():
  plain = _table().assign(**{"spec.method.learning_rate": np.nan})
  fast = plain[plain["spec.method.name"] == "lora"].assign(**{"spec.method.learning_rate": 0.01})
  fast = fast.assign(method=fast["method"] + "-lr0.01", id=fast["id"] + "-fast")
  fits = methods_analysis.fit_methods(pd.concat([plain, fast], ignore_index=True), bootstrap=10)
  assert sorted(f["method"] for f in fits) == ["lora", "lora-lr0.01"]
  assert all(f["num_points"] == 20 for f in fits)  # Four ranks x five D_f each, not mixed.


def test_two_sizes_of_p_are_validated_on_the_largest_d_f():
  """Two LoRA ranks at three D_f: without the larger rank, one P is left; the law is validated on
  the largest D_f instead of failing the report."""
  table = _table()
  table = table[table["method"].isin(["lora-rank2", "lora-rank16", "full"]) & table["d_f"].isin(D_F[:3])]
  fits = methods_analysis.fit_methods(table, bootstrap=10)
  assert [f["method"] for f in fits] == ["lora"] and fits[0]["validation"]["holdout"] == "largest_d"


def test_a_size_at_two_pretraining_budgets_is_two_bases():
  """LoRA on d32l2 pretrained to two budgets, the shorter worse by a nat: each base gets its own law
  over P, not one over the means."""
  table = _table()
  shorter = table.assign(
    pretrain_tokens=5e5, id=table["id"] + "-shorter", **{"metrics.test_loss": table["metrics.test_loss"] + 1.0}
  )
  fits = methods_analysis.fit_methods(pd.concat([table, shorter], ignore_index=True), bootstrap=10)
  assert sorted(f["base"] for f in fits) == ["d32l2 at D_p 1e+06", "d32l2 at D_p 5e+05"]
  assert all(f["num_points"] == 20 and f["params"]["alpha"] == pytest.approx(0.1, abs=2e-3) for f in fits)


def test_exponents_that_the_points_leave_undetermined_read_so():
  fits = methods_analysis.fit_methods(_table(), bootstrap=20)
  determined = methods_analysis.exponents(fits).iloc[0]
  assert determined["alpha"].startswith("0.1") and " [" in determined["alpha"]  # The value and its interval.
  assert determined["beta"] == f"{fits[0]['params']['beta']:.4g}"
  vague = [{**fits[0], "undetermined": {"alpha": "a flat optimum", "E": "a wide interval"}}]
  row = methods_analysis.exponents(vague).iloc[0]
  assert (row["alpha"], row["E"]) == ("not determined", "not determined") and row["beta"] == determined["beta"]
