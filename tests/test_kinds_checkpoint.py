"""Imported bases: a study of two Hugging Face checkpoints fine-tuned on a TFDS translation task (in
the layout of a prepared WMT config) runs end to end and fits its law; bad checkpoints, datasets and
features fail validation, naming them; a changed checkpoint is a new run."""

import json

import numpy as np
import pytest
from conftest import needs_transformers, tiny_study

from analysis import fit as fit_lib
from analysis import frames
from launch import local
from scaling import hf, kinds, results
from scaling import study as study_lib
from scaling.data import tfds_text

pytestmark = needs_transformers

# A word-for-word "language": translating is a lexicon lookup that a tiny model can start to learn.
LEXICON = {
  "hund": "dog",
  "katze": "cat",
  "haus": "house",
  "baum": "tree",
  "rot": "red",
  "gross": "big",
  "klein": "small",
  "blau": "blue",
  "der": "the",
  "ein": "a",
  "sieht": "sees",
  "hat": "has",
}
SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]


def _pairs(n: int, seed: int) -> list[tuple[str, str]]:
  rng = np.random.default_rng(seed)
  words = sorted(LEXICON)
  out = []
  for _ in range(n):
    de = list(rng.choice(words, size=4))
    out.append((" ".join(de), " ".join(LEXICON[w] for w in de)))
  return out


def _tokenizer_folder(folder) -> None:
  """A word-level tokenizer over both languages, saved as transformers saves one."""
  import transformers
  from tokenizers import Tokenizer, models, pre_tokenizers

  vocab = SPECIALS + ["German:", "English:"] + sorted(LEXICON) + sorted(set(LEXICON.values()))
  tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  fast = transformers.PreTrainedTokenizerFast(
    tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
  )
  fast.save_pretrained(folder)


def _checkpoint(folder, hidden: int, seed: int) -> None:
  """A tiny random GPT-NeoX (Pythia's family) saved by transformers, with the tokenizer beside it."""
  import torch
  import transformers

  torch.manual_seed(seed)
  config = transformers.GPTNeoXConfig(
    vocab_size=64,
    hidden_size=hidden,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=4 * hidden,
    rotary_pct=0.5,
    bos_token_id=1,
    eos_token_id=2,
  )
  transformers.GPTNeoXForCausalLM(config).save_pretrained(folder)
  _tokenizer_folder(folder)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  root = tmp_path_factory.mktemp("imported")
  for name, hidden, seed in (("small", 32, 0), ("large", 64, 1)):
    _checkpoint(root / name, hidden, seed)
  data_dir = str(root / "tfds")
  tfds_text.make_translation_dataset(
    data_dir, "wmt_tiny/de-en", {"train": _pairs(64, 0), "validation": _pairs(16, 1), "test": _pairs(16, 2)}
  )
  return root, data_dir


def _study(root, data_dir, **overrides):
  task = {
    "name": "de-en",
    "tfds": "wmt_tiny/de-en",
    "data_dir": data_dir,
    "prompt": "German: {translation.de} English:",
    "answer": "{translation.en}",
    "train": "train",
    "dev": "validation",
    "test": "test",
  }
  corpus = {
    "tfds": "wmt_tiny/de-en",
    "data_dir": data_dir,
    "text": "{translation.en}",
    "train": "train",
    "heldout": "validation",
  }
  return tiny_study(
    **{
      "model.sizes": (),
      "data": {"corpus": corpus},
      "model.checkpoints": (
        {"name": "small", "path": str(root / "small"), "pretrain_tokens": 1e6},
        {"name": "large", "path": str(root / "large"), "pretrain_tokens": 1e6},
      ),
      "finetune.tasks": (task,),
      "finetune.d_f": (8, 16, 64),
      "finetune.train.max_steps": 10,
      **overrides,
    }
  )


@pytest.mark.slow
def test_study_of_imported_checkpoints_on_a_tfds_task_runs_and_fits(inputs, tmp_path):
  root, data_dir = inputs
  study = study_lib.validate(_study(root, data_dir), 8)
  assert study.data.tokenizer == str(root / "small")  # The first checkpoint's.
  runs = kinds.expand(study)
  assert [r.kind for r in runs] == ["checkpoint"] * 2 + ["finetune"] * 6
  local.write_plan(study, runs, tmp_path)
  local.execute_all(runs, tmp_path)
  table = results.load_table(tmp_path)
  bases = table[table["kind"] == "checkpoint"].set_index("size")
  assert bases.loc["large", "non_embedding_params"] > bases.loc["small", "non_embedding_params"]
  assert bases.loc["small", "pretrain_tokens"] == 1e6
  assert np.isfinite(bases["metrics.heldout_loss"]).all()
  tuned = table[table["kind"] == "finetune"]
  assert set(tuned["task"]) == {"de-en"} and len(tuned) == 6
  assert (tuned["metrics.test_loss"] < np.log(64)).all()  # Better than uniform over the vocabulary.
  assert np.isfinite(tuned["metrics.delta_heldout_loss"]).all()
  spec = json.loads((tmp_path / "runs" / tuned["id"].iloc[0] / "spec.json").read_text())["config"]
  assert spec["checkpoints"][spec["size"]]["content"] == hf.content_id(root / spec["size"])
  points = fit_lib.finetune_points(table)
  assert fit_lib.varied_axes(points) == ["non_embedding_params"]
  law = frames.fit_frame(
    fit_lib.law_points(points, "non_embedding_params"),
    "multiplicative",
    d="d_f",
    y="test_loss",
    x="non_embedding_params",
    holdout=None,
  )
  assert law["num_points"] == 6 and law["converged"]
  # Resuming finds everything done.
  assert local.execute_all(kinds.expand(study_lib.validate(_study(root, data_dir), 8)), tmp_path) == (0, 8)


def test_a_changed_checkpoint_is_a_new_run(inputs, tmp_path):
  root, data_dir = inputs
  import shutil

  shutil.copytree(root / "small", tmp_path / "small")
  shutil.copytree(root / "large", tmp_path / "large")
  before = kinds.expand(study_lib.validate(_study(tmp_path, data_dir), 8))
  _checkpoint(tmp_path / "small", 32, seed=5)  # Same architecture, other weights: as a later step's checkpoint.
  after = kinds.expand(study_lib.validate(_study(tmp_path, data_dir), 8))
  changed = {r.config["size"] for r, s in zip(before, after) if r.id != s.id}
  assert changed == {"small"}


def _edit(entry: dict, **changes) -> dict:
  return {**entry, **changes}


def test_bad_checkpoints_datasets_and_features_fail_before_training(inputs, tmp_path):
  root, data_dir = inputs
  good = _study(root, data_dir)
  task = good.finetune.tasks[0]
  (tmp_path / "empty").mkdir()
  cases = [
    (
      {"model.checkpoints": ({"name": "x", "path": str(tmp_path / "empty")},)},
      "model.checkpoints[0].path: " + str(tmp_path / "empty") + ": no config.json",
    ),
    (
      {"model.checkpoints": ({"name": "d32l2", "path": str(root / "small")},)},
      "model.checkpoints[0].name='d32l2'; allowed: a new non-empty name, not a ladder size",
    ),
    ({"finetune.tasks": (_edit(task, tfds="wmt_huge/de-en"),)}, "dataset 'wmt_huge/de-en' is not prepared in data_dir"),
    (
      {"finetune.tasks": (_edit(task, answer="{translation.fr}"),)},
      "template answer reads feature 'translation.fr', which the dataset lacks; its features are "
      "['translation.de', 'translation.en']",
    ),
    ({"finetune.tasks": (_edit(task, test="newstest2014"),)}, "finetune.tasks[0].test: dataset 'wmt_tiny/de-en"),
    (
      {
        "data": {
          "corpus": {
            "tfds": "wmt_tiny/de-en",
            "data_dir": data_dir,
            "text": "{text}",
            "train": "train",
            "heldout": "validation",
          }
        }
      },
      "data.corpus: template answer reads feature 'text'",
    ),
    ({"finetune.tasks": ("qa",)}, "finetune.tasks[0]='qa', a world task, is scored word by word"),
  ]
  for overrides, message in cases:
    with pytest.raises(study_lib.StudyError) as e:
      study_lib.validate(_study(root, data_dir, **overrides), 8)
    assert message in str(e.value)
  assert not any(tmp_path.glob("runs"))
