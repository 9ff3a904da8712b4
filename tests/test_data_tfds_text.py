"""Prepared TFDS text datasets read by name, templates over nested features, and the Shakespeare data."""

import json
import shutil
import tempfile

import pytest
from tokenizers import Tokenizer

from scaling.data import shakespeare, tfds_text, tokenizer
from scaling.data import world as world_lib

PAIRS = {
  "train": [
    ("Guten Morgen.", "Good morning."),
    ("Danke schön.", "Thank you very much."),
    ("Wo ist der Bahnhof?", "Where is the station?"),
  ],
  "validation": [("Ja.", "Yes.")],
}
WMT_TEMPLATE = tfds_text.Template("Translate German to English: {translation.de}\nEnglish:", "{translation.en}")


@pytest.fixture(scope="module")
def wmt_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("wmt"))
  tfds_text.make_translation_dataset(data_dir, "wmt19_translate/de-en", PAIRS)
  return data_dir


@pytest.fixture(scope="module")
def shakespeare_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("shakespeare"))
  for config in shakespeare.SPLITS:
    shakespeare.prepare(data_dir, config)
  return data_dir


def test_translation_dataset_reads_like_a_prepared_wmt_config(wmt_dir):
  ds = tfds_text.open_dataset("wmt19_translate/de-en", wmt_dir)
  assert ds.name == "wmt19_translate/de-en:1.0.0" and ds.splits == ["train", "validation"]
  assert tfds_text.open_dataset("wmt19_translate/de-en:1.0.0", wmt_dir).path == ds.path
  assert tfds_text.feature_paths(ds) == ["translation.de", "translation.en"]
  assert json.loads((ds.path / "dataset_info.json").read_text())["fileFormat"] == "array_record"
  source = ds.source("train")
  assert len(source) == ds.num_examples("train") == 3
  assert source[2] == {"translation": {"de": "Wo ist der Bahnhof?".encode(), "en": b"Where is the station?"}}
  WMT_TEMPLATE.check(tfds_text.feature_paths(ds))
  assert WMT_TEMPLATE.fields == ["translation.de", "translation.en"]
  assert WMT_TEMPLATE.render(ds.source("train")[1]) == {
    "prompt": "Translate German to English: Danke schön.\nEnglish:",
    "answer": "Thank you very much.",
  }
  assert tfds_text.available(wmt_dir) == ["wmt19_translate/de-en:1.0.0"]


def test_open_dataset_errors_name_what_is_wrong_and_what_is_there(wmt_dir, tmp_path):
  with pytest.raises(
    ValueError,
    match=r"'wmt19_translate/zh-en' is not prepared in data_dir .*: there is no folder .*"
    r"data_dir holds \['wmt19_translate/de-en:1.0.0'\]",
  ):
    tfds_text.open_dataset("wmt19_translate/zh-en", wmt_dir)
  with pytest.raises(ValueError, match=r"has versions \['1.0.0'\]"):
    tfds_text.open_dataset("wmt19_translate/de-en:2.0.0", wmt_dir)
  with pytest.raises(ValueError, match="may have configs"):
    tfds_text.open_dataset("wmt19_translate", wmt_dir)
  with pytest.raises(ValueError, match=f"in data_dir '{tmp_path}/none': data_dir does not exist"):
    tfds_text.open_dataset("wmt19_translate/de-en", str(tmp_path / "none"))
  with pytest.raises(ValueError, match="not of the form"):
    tfds_text.open_dataset("wmt19 translate", wmt_dir)
  with pytest.raises(ValueError, match=r"no split 'test'; its splits are \['train', 'validation'\]"):
    tfds_text.open_dataset("wmt19_translate/de-en", wmt_dir).source("test")
  # The same files, described as TFRecord: preparation without file_format="array_record".
  src = tfds_text.open_dataset("wmt19_translate/de-en", wmt_dir).path
  dst = tmp_path / "wmt19_translate" / "de-en" / "1.0.0"
  shutil.copytree(src, dst)
  info = json.loads((dst / "dataset_info.json").read_text())
  (dst / "dataset_info.json").write_text(json.dumps({**info, "fileFormat": "tfrecord"}))
  with pytest.raises(ValueError, match=r"stored as tfrecord; .*needs array_record.*file_format=\"array_record\""):
    tfds_text.open_dataset("wmt19_translate/de-en", str(tmp_path))


def test_template_errors_name_the_field():
  with pytest.raises(
    ValueError, match=r"prompt reads feature 'translation.fr'.*\['translation.de', 'translation.en'\]"
  ):
    tfds_text.Template("{translation.fr}", "{translation.en}").check(["translation.de", "translation.en"])
  with pytest.raises(ValueError, match=r"answer '\{\}' has field \{\}"):
    tfds_text.Template("{text}", "{}")
  with pytest.raises(ValueError, match=r"prompt '\{text!r\}' has field \{text!r\}"):
    tfds_text.Template("{text!r}", "")
  with pytest.raises(ValueError, match="prompt 'a {b' is malformed"):
    tfds_text.Template("a {b", "")
  assert tfds_text.Template("{{literal}} {a.b.c}", "").render({"a": {"b": {"c": b"x"}}})["prompt"] == "{literal} x"


def test_shakespeare_splits_sizes_and_no_overlap(shakespeare_dir):
  sizes = {"corpus": {"train": 38445, "heldout": 1974}, "play": {"train": 24923, "dev": 420, "test": 382}}
  corpus, task = (tfds_text.open_dataset(n, shakespeare_dir) for n in (shakespeare.CORPUS, shakespeare.TASK))
  assert tfds_text.feature_paths(corpus) == ["play", "text"] and tfds_text.feature_paths(task) == ["answer", "prompt"]
  for ds, config in ((corpus, "corpus"), (task, "play")):
    assert {s: ds.num_examples(s) for s in ds.splits} == sizes[config]
  # Read back what was generated, in order (smaller splits: one record at a time is slow).
  for ds, config, split in ((corpus, "corpus", "heldout"), (task, "play", "dev"), (task, "play", "test")):
    source = ds.source(split)
    assert [
      {k: v.decode() for k, v in r.items()} for r in source.__getitems__(range(len(source)))
    ] == shakespeare.records(config, split)
  text = {s: {r["text"] for r in shakespeare.records("corpus", s)} for s in ("train", "heldout")}
  prompts = {s: {r["prompt"] for r in shakespeare.records("play", s)} for s in ("train", "dev", "test")}
  assert not text["train"] & text["heldout"]
  assert not (prompts["dev"] | prompts["test"]) & (text["train"] | text["heldout"])
  assert not prompts["dev"] & prompts["test"] and prompts["train"] <= text["train"]
  assert {r["answer"] for r in shakespeare.records("play", "test")} <= set(shakespeare.plays().values())
  assert len(shakespeare.plays()) == 37
  assert max(p.num_words for p in shakespeare.pieces()) <= shakespeare.MAX_WORDS
  assert shakespeare.records("corpus", "heldout")[0] == {
    "text": "LAFEU: How called you the man you speak of, madam?",
    "play": "All's Well That Ends Well",
  }
  with pytest.raises(ValueError, match="no split 'validation' in config 'play'"):
    shakespeare.records("play", "validation")


def test_shakespeare_speeches_parse_each_layout():
  text = (
    "PERSONS.\n\nHam., a prince.\n\nACT I.\n\nScene I. A room.\n\n[Enter Hamlet.]\n\nHam.\nTo be,\nor not. [Aside.]\n\n"
    "[Exit Ghost.]\n\nStay!\n\nLADY MACBETH\nOut, spot!\n\nKING. Ay, that is so.\nIt is.\n\nSCENE II.\n\nNo one."
  )
  assert shakespeare.speeches(text) == [
    ("Ham", ["To be,", "or not."]),
    ("Ham", ["Stay!"]),
    ("LADY MACBETH", ["Out, spot!"]),
    ("KING", ["Ay, that is so.", "It is."]),
  ]


def test_tokenizer_is_deterministic_and_round_trips(tmp_path):
  tok = shakespeare.train_tokenizer(str(tmp_path / "a"))
  assert tok.get_vocab_size() == 1024
  assert [tok.token_to_id(t) for t in world_lib.SPECIAL_TOKENS] == [0, 1, 2, 3]
  shakespeare.train_tokenizer(str(tmp_path / "b"))
  assert (tmp_path / "a" / "tokenizer.json").read_text() == (tmp_path / "b" / "tokenizer.json").read_text()
  loaded = Tokenizer.from_file(str(tmp_path / "a" / "tokenizer.json"))
  for text in [r["text"] for r in shakespeare.records("corpus", "heldout")[:200]] + ["Ünïcode ☃"]:
    ids = loaded.encode(text).ids
    assert (
      ids == tok.encode(text).ids and loaded.decode(ids) == text and world_lib.UNK not in loaded.encode(text).tokens
    )
  assert shakespeare.train_tokenizer(str(tmp_path / "a")).to_str() == tok.to_str()  # Loaded, not retrained.
  with pytest.raises(ValueError, match="vocabulary of 1024, not vocab_size=2048"):
    shakespeare.train_tokenizer(str(tmp_path / "a"), vocab_size=2048)
  from transformers import AutoTokenizer  # About 2 s to import: only here.

  hf = AutoTokenizer.from_pretrained(str(tmp_path / "a"))
  assert (hf.pad_token_id, hf.bos_token_id, hf.eos_token_id, hf.unk_token_id) == (0, 1, 2, 3)
  assert hf("HAMLET: Who's there?")["input_ids"] == tok.encode("HAMLET: Who's there?").ids
  text_tok = tokenizer.from_transformers(hf)
  assert (text_tok.bos, text_tok.eos, text_tok.pad, text_tok.size) == (1, 2, 0, 1024)
  assert text_tok.encode("HAMLET: Who's there?") == tok.encode("HAMLET: Who's there?").ids
  # Pythia's kind: one end-of-text token, no start or padding token of its own.
  from transformers import PreTrainedTokenizerFast

  only_eos = tokenizer.from_transformers(PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>"))
  assert (only_eos.bos, only_eos.eos, only_eos.pad) == (2, 2, 2)


def test_building_a_dataset_leaves_nothing_in_the_temporary_folder(tmp_path, monkeypatch):
  scratch = tmp_path / "tmp"
  scratch.mkdir()
  monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # The system's temporary folder, for this test.
  tfds_text.make_translation_dataset(str(tmp_path / "data"), "wmt19_translate/de-en", PAIRS)
  assert tfds_text.open_dataset("wmt19_translate/de-en", str(tmp_path / "data")).num_examples("train") > 0
  assert list(scratch.iterdir()) == []
