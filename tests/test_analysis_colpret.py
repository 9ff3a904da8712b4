"""ColPret's families as law points (analysis.colpret): the CSV a family gives, --list, and errors.

The fixtures under tests/fixtures/colpret are a few invented rows under the real headers of IBM/ColPret's files
(github.com/IBM/ColPret, MIT licence), laid out as in a clone of it; no data of theirs is copied.
"""

import math
import os
import shutil

import numpy as np
import pandas as pd
import pytest

from analysis import colpret

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE = os.path.join(ROOT, "tests", "fixtures", "colpret")
OPT = os.path.join(SOURCE, "aggregated_eval", "opt_trajectories.csv")


def test_opt_final_checkpoints_make_the_expected_csv(tmp_path, capsys):
  out = tmp_path / "opt.csv"
  colpret.main(["--source", SOURCE, "--family", "opt", "--out", str(out)])
  assert "2 points of 2 models" in capsys.readouterr().out
  got = pd.read_csv(out)
  assert list(got.columns) == colpret.COLUMNS
  want = pd.DataFrame(
    {
      "family": ["opt", "opt"],
      "model": ["OPT-125m", "OPT-1.3b"],
      "N": [125e6, 1.3e9],
      "D": [4000 * 0.5e6, 6000 * 1e6],  # Steps times the size's batch of tokens.
      "U": [2e9, 6e9],  # All unique: D is below OPT's 180B-token corpus.
      "loss": [math.log(40.0), math.log(20.0)],  # The log of the perplexity.
      "data": ["OPT corpus"] * 2,
      "step": [4000, 6000],
      "metric": ["ppl"] * 2,
      "source": ["aggregated_eval/opt_trajectories.csv"] * 2,
    }
  )
  pd.testing.assert_frame_equal(got, want, check_dtype=False)
  # D agrees with the file's own log10 token count.
  raw = pd.read_csv(OPT)
  assert np.log10(got["D"]).tolist() == pytest.approx(raw.groupby("model_size", sort=False)["num_token"].max().tolist())


def test_every_checkpoint_and_a_file_as_the_source(tmp_path):
  every = colpret.read_family(OPT, "opt", checkpoints="all")  # The family's file itself, not the clone.
  assert every[["model", "D"]].values.tolist() == [
    ["OPT-125m", 1e9],
    ["OPT-125m", 2e9],
    ["OPT-1.3b", 2e9],
    ["OPT-1.3b", 6e9],
  ]
  assert every["loss"].tolist() == pytest.approx(np.log([60.0, 40.0, 30.0, 20.0]))


def test_datablations_unique_tokens_are_tokens_over_epochs():
  got = colpret.read_family(SOURCE, "datablations")
  assert got["model"].tolist() == ["GPT2-7m100m100m", "GPT2-14m400m100m", "GPT2-83m3b1b5", "GPT2-2b855b1b25"]
  assert got["D"].tolist() == [1e8, 4e8, 3e9, pytest.approx(55.1e9)]
  # 2b855b1b25's epochs in ColPret's file (2.204) are wrong: its name says 1.25B unique tokens.
  assert got["U"].tolist() == [1e8, 1e8, 1.5e9, 1.25e9]
  assert got["loss"].tolist() == [7.5, 6.0, 4.0, 3.5] and set(got["metric"]) == {"openLM_loss"}
  # The long runs: one dataset at a time, U the epoch's tokens (no more than D), the last checkpoint.
  curves = colpret.read_family(SOURCE, "datablations_c4")
  assert curves["model"].tolist() == ["GPT2-2.8B-c4-1ep", "GPT2-2.8B-c4-44ep"]
  assert curves["U"].tolist() == [54999908352, 1.25e9] and curves["loss"].tolist() == [2.6, 3.4]
  assert colpret.read_family(SOURCE, "datablations_oscar")["loss"].tolist() == [3.0]


def test_other_families_sizes_tokens_and_metrics():
  t5 = colpret.read_family(SOURCE, "t5_pile", checkpoints="all")  # Step 0 (D = 0) is left out.
  assert t5["model"].tolist() == ["pile-t5-base", "pile-t5-base", "pile-t5-large"]
  assert t5["D"].tolist() == [1e10, 2e10, 1e10] and t5["N"].tolist() == [247586304, 247586304, 783173632]
  assert t5["loss"].tolist() == pytest.approx(np.log([1.08, 1.07, 1.06]))
  gpt3 = colpret.read_family(SOURCE, "gpt3")  # The last validation point; training-loss rows are not it.
  assert gpt3[["model", "N", "D", "loss"]].values.tolist() == [
    ["GPT-3-small", 125e6, 299.5e9, 2.75],
    ["GPT-3-175b", 175e9, 299.75e9, 1.8],
  ]
  olmo = colpret.read_family(SOURCE, "olmo")  # OLMo-1B's name is stripped; 'pile' takes either column.
  assert olmo[["model", "N", "D", "loss"]].values.tolist() == [
    ["OLMo-1B", 1e9, 2000 * 2048 * 2048, 3.0],
    ["OLMo-7B", 7e9, 21000 * 2160 * 2048, 2.5],
  ]
  c4 = colpret.read_family(SOURCE, "olmo", metric="c4_en-validation/CrossEntropyLoss")
  assert c4["model"].tolist() == ["OLMo-7B"] and c4["loss"].tolist() == [2.75]
  over = colpret.read_family(SOURCE, "overtrain_c4")
  assert over[["N", "D", "loss"]].values.tolist() == [
    [10569312, 52846560, 6.0],
    [10569312, 211386240, 5.2],
    [1439795200, 28795904000, 2.65],
  ]
  assert colpret.read_family(SOURCE, "overtrain_c4", metric="loss_openlm")["loss"].tolist() == [7.0, 6.5, 3.3]
  assert colpret.read_family(SOURCE, "overtrain_rpj")["loss"].tolist() == [5.4]


def test_list_prints_each_family_found(capsys):
  colpret.main(["--source", SOURCE, "--list"])
  lines = capsys.readouterr().out.splitlines()
  rows = {line.split()[0]: line.split() for line in lines[1:]}
  assert lines[0].split()[:3] == ["family", "models", "sizes"] and set(rows) == set(colpret.FAMILIES)
  assert rows["opt"][1:6] == ["2", "2", "125M-1.3B", "2B-6B", "4"]  # Models, sizes, N, final D, checkpoints.
  assert rows["datablations"][1:6] == ["4", "4", "7.1M-2.81B", "100M-55.1B", "4"]
  assert rows["overtrain_rpj"][1:3] == ["1", "1"]
  colpret.main(["--source", OPT, "--list"])  # A file lists the families it holds.
  assert [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]] == ["opt"]


def test_list_says_which_family_files_are_absent(tmp_path, capsys):
  shutil.copytree(SOURCE, tmp_path / "clone")
  os.remove(tmp_path / "clone" / "aggregated_eval" / "t5_pile.csv")
  colpret.main(["--source", str(tmp_path / "clone"), "--list"])
  out = capsys.readouterr().out
  assert "t5_pile             absent: no aggregated_eval/t5_pile.csv" in out and "\nopt " in out


@pytest.mark.parametrize(
  "argv, message",
  [
    (["--family", "pythia", "--out", "x.csv"], "--family 'pythia' is unknown; allowed: opt, gpt3, t5_pile"),
    (["--family", "opt", "--out", "x.csv", "--metric", "loss"], "--metric 'loss' is not one of the opt family's"),
  ],
)
def test_errors_name_the_argument_and_what_is_allowed(argv, message, tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    colpret.main(["--source", SOURCE, *argv])
  assert message in str(e.value) and str(e.value).startswith("error: ")
  assert not (tmp_path / "x.csv").exists()


def test_errors_for_a_missing_source_a_wrong_file_and_missing_arguments(tmp_path, capsys):
  with pytest.raises(SystemExit, match=r"--source .*nowhere: no such file or directory"):
    colpret.main(["--source", str(tmp_path / "nowhere"), "--family", "opt", "--out", str(tmp_path / "x.csv")])
  with pytest.raises(SystemExit, match=r"is not the gpt3 family's file; that is raw_data/gpt3/extracted.csv"):
    colpret.main(["--source", OPT, "--family", "gpt3", "--out", str(tmp_path / "x.csv")])
  with pytest.raises(SystemExit, match=r"has no aggregated_eval/olmo.csv \(the olmo family's file\)"):
    colpret.main(["--source", str(tmp_path), "--family", "olmo", "--out", str(tmp_path / "x.csv")])
  wrong = tmp_path / "opt_trajectories.csv"  # Another family's file under this one's name.
  shutil.copy(os.path.join(SOURCE, "raw_data", "gpt3", "extracted.csv"), wrong)
  with pytest.raises(SystemExit, match=r"has no column 'model_size': it is not ColPret's opt file"):
    colpret.main(["--source", str(wrong), "--family", "opt", "--out", str(tmp_path / "x.csv")])
  with pytest.raises(ValueError, match=r"--checkpoints 'last'; allowed: final, all"):
    colpret.read_family(SOURCE, "opt", checkpoints="last")
  with pytest.raises(SystemExit):  # argparse: --family needs --out.
    colpret.main(["--source", SOURCE, "--family", "opt"])
  assert "--family and --out are needed (or --list)" in capsys.readouterr().err


def test_count_reads_sizes_as_the_files_write_them():
  assert [colpret.count(s) for s in ["125m", "1.3b", "2.8B", "7B", "14100000.0", "1e9"]] == [
    125e6,
    1.3e9,
    2.8e9,
    7e9,
    14.1e6,
    1e9,
  ]
  with pytest.raises(ValueError, match="not a count"):
    colpret.count("large")
