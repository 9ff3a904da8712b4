"""Lin et al.'s fine-tuning runs as law points (analysis.lin): the CSV a dataset gives, --list, and errors.

The fixtures under tests/fixtures/lin are a few invented rows under the real header of the benchmark files of
linhaowei1/Fine-tuning-Scaling-Law (Apache-2.0 licence), laid out as in a clone of it; no data of theirs is copied.
"""

import os
import shutil

import pandas as pd
import pytest

from analysis import lin

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE = os.path.join(ROOT, "tests", "fixtures", "lin")
FLAN = os.path.join(SOURCE, "benchmark", "flan.csv")
SIZES = [200 * 2**i for i in range(14)]  # The files' subset sizes after 0: 200 to 1,638,400, doubling.


def test_a_dataset_makes_one_row_per_model_and_subset_size(tmp_path, capsys):
  out = tmp_path / "flan.csv"
  lin.main(["--source", SOURCE, "--dataset", "flan", "--out", str(out)])
  assert "42 points of 3 models (flan; N 124M-774M, d_f 200-1.64M)" in capsys.readouterr().out
  got = pd.read_csv(out)
  assert list(got.columns) == lin.COLUMNS
  # Sorted by N (the file's `size`), not the file's order; size 0 is the zero_shot column, not a row.
  models = ["gpt2", "google/switch-base-8", "MBZUAI/LaMini-GPT-774M"]
  want = pd.DataFrame(
    {
      "model": [m for m in models for _ in SIZES],
      "family": [f for f in ["GPT2", "Switch Transformer", "LaMini"] for _ in SIZES],
      "N": [n for n in [124439808, 619339008, 774031360] for _ in SIZES],
      "d_f": SIZES * 3,
      "loss": [4.4 - 0.1 * i for i in range(14)]
      + [4.125 - 0.125 * i for i in range(14)]
      + [3.5 - 0.1 * i for i in range(14)],
      "zero_shot": [z for z in [5.0, 30.0, 4.5] for _ in SIZES],
      "dataset": ["flan"] * 42,
      "source": ["benchmark/flan.csv"] * 42,
    }
  )
  pd.testing.assert_frame_equal(got, want, check_dtype=False)
  # The losses are the file's, read back as written.
  raw = pd.read_csv(FLAN, index_col=0)
  for model, row in got.set_index("model").iterrows():
    assert row["loss"] in set(raw.loc[model, [str(s) for s in SIZES]]) and row["zero_shot"] == raw.loc[model, "0"]


def test_zero_shot_rows_empty_cells_and_a_file_as_the_source():
  every = lin.read_dataset(SOURCE, "wmt19", zero_shot=True)
  assert every["d_f"].tolist() == [0, *SIZES] and every["loss"].tolist()[:3] == [3.25, 3.0, 2.95]
  assert set(every["zero_shot"]) == {3.25}
  giga = lin.read_dataset(os.path.join(SOURCE, "benchmark", "gigaword.csv"), "gigaword")  # The file, not the clone.
  assert giga.groupby("model", sort=False)["d_f"].max().to_dict() == {"t5-small": 1638400, "gpt2": 409600}
  assert len(giga) == 14 + 12  # gpt2's two empty cells (runs not done) are left out.
  assert giga.loc[giga["model"] == "t5-small", "loss"].tolist() == pytest.approx([2.25 - 0.05 * i for i in range(14)])


def test_list_prints_each_dataset_and_model_found(capsys):
  lin.main(["--source", SOURCE, "--list"])
  lines = capsys.readouterr().out.splitlines()
  blank = lines.index("")
  rows = {line.split()[0]: line.split() for line in lines[1:blank]}
  assert lines[0].split()[:3] == ["dataset", "models", "points"] and set(rows) == set(lin.DATASETS)
  assert rows["flan"][1:7] == ["3", "42", "124M-774M", "200-1.64M", "2.2-4.4", "4.5-30"]
  assert rows["gigaword"][1:3] == ["2", "26"] and rows["wmt19"][1:3] == ["1", "14"]
  models = {line.split()[0]: line.split() for line in lines[blank + 2 :]}
  assert lines[blank + 1].split() == ["model", "N", "family", "datasets"]
  assert list(models) == ["t5-small", "gpt2", "google/switch-base-8", "MBZUAI/LaMini-GPT-774M"]  # By N.
  assert models["gpt2"][1:] == ["124M", "GPT2", "flan,gigaword,wmt19"]
  assert models["google/switch-base-8"][1:] == ["619M", "Switch", "Transformer", "flan"]
  lin.main(["--source", FLAN, "--list"])  # A file lists the dataset it holds.
  out = capsys.readouterr().out.splitlines()
  assert [line.split()[0] for line in out[1 : out.index("")]] == ["flan"]


def test_list_says_which_dataset_files_are_absent(tmp_path, capsys):
  shutil.copytree(SOURCE, tmp_path / "clone")
  os.remove(tmp_path / "clone" / "benchmark" / "wmt19.csv")
  lin.main(["--source", str(tmp_path / "clone"), "--list"])
  out = capsys.readouterr().out
  assert "wmt19     absent: no benchmark/wmt19.csv" in out and "\nflan " in out


@pytest.mark.parametrize(
  "argv, message",
  [
    (["--dataset", "xsum", "--out", "x.csv"], "--dataset 'xsum' is unknown; allowed: flan, gigaword, wmt19"),
    (["--dataset", "FLAN", "--out", "x.csv"], "--dataset 'FLAN' is unknown; allowed: flan, gigaword, wmt19"),
  ],
)
def test_an_unknown_dataset_is_named_with_what_is_allowed(argv, message, tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    lin.main(["--source", SOURCE, *argv])
  assert message in str(e.value) and str(e.value).startswith("error: ")
  assert not (tmp_path / "x.csv").exists()


def test_errors_for_a_missing_source_a_wrong_file_and_missing_arguments(tmp_path, capsys):
  out = str(tmp_path / "x.csv")
  with pytest.raises(SystemExit, match=r"--source .*nowhere: no such file or directory"):
    lin.main(["--source", str(tmp_path / "nowhere"), "--dataset", "flan", "--out", out])
  with pytest.raises(SystemExit, match=r"is not the wmt19 dataset's file; that is benchmark/wmt19.csv"):
    lin.main(["--source", FLAN, "--dataset", "wmt19", "--out", out])
  with pytest.raises(SystemExit, match=r"has no benchmark/gigaword.csv \(the gigaword dataset's file\)"):
    lin.main(["--source", str(tmp_path), "--dataset", "gigaword", "--out", out])
  with pytest.raises(SystemExit, match=r"is no dataset's file; allowed files: flan.csv, gigaword.csv, wmt19.csv"):
    lin.main(
      ["--source", os.path.join(ROOT, "tests", "fixtures", "colpret", "raw_data", "gpt3", "extracted.csv"), "--list"]
    )
  wrong = tmp_path / "flan.csv"  # Another collection's file under this one's name.
  shutil.copy(os.path.join(ROOT, "tests", "fixtures", "colpret", "raw_data", "gpt3", "extracted.csv"), wrong)
  with pytest.raises(SystemExit, match=r"has no column 'config name': it is not Lin et al.'s flan file"):
    lin.main(["--source", str(wrong), "--dataset", "flan", "--out", out])
  pd.read_csv(FLAN).drop(columns=["size"]).to_csv(wrong, index=False)
  with pytest.raises(SystemExit, match=r"has no column 'size'"):
    lin.main(["--source", str(wrong), "--dataset", "flan", "--out", out])
  pd.read_csv(FLAN).assign(size=["774M", "", "619339008"]).to_csv(wrong, index=False)
  with pytest.raises(SystemExit, match=r"no parameter count \('size'\) for model 'MBZUAI/LaMini-GPT-774M'"):
    lin.main(["--source", str(wrong), "--dataset", "flan", "--out", out])
  assert not os.path.exists(out)
  with pytest.raises(SystemExit):  # argparse: --dataset needs --out.
    lin.main(["--source", SOURCE, "--dataset", "flan"])
  assert "--dataset and --out are needed (or --list)" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    lin.main(["--source", SOURCE, "--list", "--zero-shot"])
  assert "leave out --dataset, --out and --zero-shot" in capsys.readouterr().err
