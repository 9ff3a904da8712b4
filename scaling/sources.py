"""Where a run's text comes from, as plug-ins: the corpus that bases pretrain on (and are checked
for forgetting on), the fine-tuning tasks, and the tokenizer that reads them.

Corpora (`data.corpus`): `world`, the synthetic world's biographies; `shakespeare`, Shakespeare's
plays (scaling.data.shakespeare); or a prepared TFDS dataset, a dict
{"tfds": name, "data_dir": dir, "text": template, "train": split, "heldout": split}.
Tasks (`finetune.tasks`): the world's by name (`qa`); `shakespeare_play`; or a prepared TFDS
dataset, a dict {"name", "tfds", "data_dir", "prompt", "answer", "train", "dev", "test"} whose
templates read feature paths (`"{translation.de}"`). Such a task may add `metrics` (names from
scaling.text_metrics.METRICS), `format` (a regular expression that a well-formed answer matches
whole) and `max_answer_tokens` (default 32): its runs then also score greedy answers to the test
prompts as text, by those metrics and by `behaviour`, the fraction of answers of that format.
Tokenizers (`data.tokenizer`): `world` (its word tokenizer), `shakespeare` (a BPE trained on that
corpus), or a folder that transformers.AutoTokenizer loads, such as a checkpoint's.

A run's spec names its corpus, task and tokenizer; `Sources` builds what they need under the
workdir's data/ folder (the world's and Shakespeare's datasets) and reads them.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections.abc import Callable, Mapping

import numpy as np
from etils import epath

from scaling import evaluate, hf, text_metrics
from scaling.data import pipeline, shakespeare, tfds_text, tfds_world, tokenizer
from scaling.data import world as world_lib

SHAKESPEARE_TASK = "shakespeare_play"
SHAKESPEARE_TOKENIZER_SIZE = 2048
TFDS_CORPUS_FIELDS = ("tfds", "data_dir", "text", "train", "heldout")
TFDS_TASK_FIELDS = ("name", "tfds", "data_dir", "prompt", "answer", "train", "dev", "test")
# Optional: absent, they are not filled in, so that the task's dict (and the ids of its runs) stay as they were.
TFDS_TASK_OPTIONAL = ("metrics", "format", "max_answer_tokens")
MAX_ANSWER_TOKENS = 32  # A generating task's `max_answer_tokens` unless it gives one.
# Templates that make the Shakespeare dataset's records prompts and answers.
_SHAKESPEARE_TEXT = tfds_text.Template("", "{text}")
_SHAKESPEARE_PLAY = tfds_text.Template("{prompt}\nPlay:", " {answer}")


class Rendered:
  """Random-access records of a TFDS split, made prompts and answers by a template."""

  def __init__(self, source, template: tfds_text.Template):
    self.source, self.template = source, template

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, i: int) -> dict[str, str]:
    return self.template.render(self.source[i])


def _checked_template(ds: tfds_text.Dataset, template: tfds_text.Template, field: str) -> tfds_text.Template:
  try:
    template.check(tfds_text.feature_paths(ds))
  except ValueError as e:
    raise ValueError(f"{field}: {e}") from None
  return template


def _dict_fields(entry: Mapping, fields: tuple[str, ...], where: str, optional: tuple[str, ...] = ()) -> dict:
  """A TFDS source's dict, checked to have exactly `fields`, and any of `optional`."""
  entry = dict(entry)
  unknown, missing = sorted(set(entry) - set(fields) - set(optional)), [f for f in fields if f not in entry]
  if unknown or missing:
    raise ValueError(
      f"{where}: {'unknown field ' + repr(unknown[0]) if unknown else 'missing ' + repr(missing[0])}; "
      f"a TFDS source has the fields {list(fields)}" + (f" and optionally {list(optional)}" if optional else "")
    )
  return entry


_OPENED: dict[str, Sources] = {}


def from_spec(spec: Mapping, data_dir: str) -> Sources:
  """The sources of a run's spec: its world, and its corpus and tokenizer where they are not the world's.

  One object per process for equal sources: the runs of a study share its world, tokenizer,
  record sources and evaluation batches instead of building them again.
  """
  args = (spec["world"], data_dir, spec.get("corpus", "world"), spec.get("tokenizer", "world"))
  key = json.dumps(args, sort_keys=True)
  if key not in _OPENED:
    _OPENED[key] = Sources(world_lib.WorldConfig(**args[0]), *args[1:])
  return _OPENED[key]


def model_vocab_size(world_config: world_lib.WorldConfig, tokenizer_spec: str) -> int:
  """The model vocabulary of a study's runs, from its tokenizer (`data.tokenizer`, resolved), without
  building any dataset: Shakespeare's tokenizer has its size before it is trained."""
  if tokenizer_spec == "shakespeare":
    return tokenizer.padded_vocab_size(SHAKESPEARE_TOKENIZER_SIZE)
  return tokenizer.padded_vocab_size(Sources(world_config, "", "world", tokenizer_spec).tok.size)


def task_of(spec: Mapping) -> str | Mapping:
  """The task entry of a run's spec: a TFDS task's dict, or a name."""
  return spec.get("task_source") or spec["task"]


def task_name(entry: str | Mapping) -> str:
  """The name that results and figures give a task."""
  return entry if isinstance(entry, str) else str(dict(entry).get("name", ""))


def is_world_task(entry: str | Mapping) -> bool:
  return isinstance(entry, str) and entry in world_lib.TASKS


def generates(entry: str | Mapping) -> bool:
  """Whether a task's runs score generated answers as text: a TFDS task with `metrics` or a `format`."""
  return not isinstance(entry, str) and (bool(entry.get("metrics")) or "format" in entry)


@dataclasses.dataclass(frozen=True)
class Sources:
  """A run's corpus, task and tokenizer, read from `data_dir` (world and Shakespeare datasets are
  built there on first use)."""

  world_config: world_lib.WorldConfig
  data_dir: str
  corpus_spec: str | Mapping = "world"
  tokenizer_spec: str = "world"

  def _memo(self, key: tuple, make: Callable[[], object]):
    """make(), once per key and object."""
    memo = self.__dict__.setdefault("_memoised", {})  # Beside cached_property's values.
    if key not in memo:
      memo[key] = make()
    return memo[key]

  def eval_batches(self, source, batch_size: int, max_len: int | None = None) -> list[dict]:
    """Evaluation batches of one of these sources' record sources, no longer than `max_len` (None: no
    limit; see pipeline.eval_batches), made once."""
    source_, batches = self._memo(
      ("batches", id(source), batch_size, max_len),
      lambda: (source, pipeline.eval_batches(source, self.tok, batch_size, max_len)),
    )
    assert source_ is source, "eval_batches takes the record sources of corpus() and task()"
    return batches

  @functools.cached_property
  def world(self) -> world_lib.World:
    return world_lib.build_world(self.world_config)

  @functools.cached_property
  def _world_builder(self) -> tfds_world.WorldBuilder:
    return tfds_world.prepare(self.world_config, self.data_dir)

  def prepare(self, tasks: tuple = ()) -> None:
    """Builds the datasets and tokenizer these sources read (one host does this before the others read)."""
    uses = {x for x in (self.corpus_spec, self.tokenizer_spec, *tasks) if isinstance(x, str)}
    if "world" in uses or any(is_world_task(t) for t in tasks):
      _ = self._world_builder  # Built on first use.
    if uses & {"shakespeare", SHAKESPEARE_TASK}:
      shakespeare.prepare(self.data_dir, "corpus")
      shakespeare.prepare(self.data_dir, "play")
    _ = self.tok  # Shakespeare's is trained on first use.

  @functools.cached_property
  def tok(self) -> tokenizer.TextTokenizer:
    """The tokenizer of every text of the run."""
    spec = self.tokenizer_spec
    if spec == "world":
      return tokenizer.from_tokenizers(self.world_tokenizer)
    if spec == "shakespeare":
      folder = epath.Path(self.data_dir) / "shakespeare_tokenizer"
      return tokenizer.from_tokenizers(shakespeare.train_tokenizer(str(folder), SHAKESPEARE_TOKENIZER_SIZE))
    return tokenizer.from_transformers(hf.tokenizer(spec))

  @functools.cached_property
  def world_tokenizer(self):
    return tokenizer.word_tokenizer(self.world.vocabulary())

  # --- Corpus ---

  def corpus(self, role: str):
    """Random-access pretraining records (`prompt` empty, `answer` the text) of `train` or `heldout`."""
    return self._memo(("corpus", role), lambda: self._corpus(role))

  def _corpus(self, role: str):
    spec = self.corpus_spec
    if spec == "world":
      return self._world_builder.as_data_source({"train": "pretrain", "heldout": "pretrain_heldout"}[role])
    if spec == "shakespeare":
      ds = tfds_text.open_dataset(shakespeare.CORPUS, self.data_dir)
      return Rendered(ds.source(role), _SHAKESPEARE_TEXT)
    ds = tfds_text.open_dataset(spec["tfds"], spec["data_dir"])
    return Rendered(ds.source(spec[role]), tfds_text.Template("", spec["text"]))

  def retention(self, mixture, batches: Callable[[object], list[dict]]) -> dict[str, float]:
    """How well a model still does on the corpus: held-out loss (and, for the world, cloze knowledge
    of held-out people). `batches` makes evaluation batches of a record source."""
    out = {"heldout_loss": evaluate.mean_loss(mixture, batches(self.corpus("heldout")))}
    if self.corpus_spec == "world" and self.tokenizer_spec == "world":
      cloze = self._memo(("cloze",), lambda: self._world_builder.as_data_source("cloze_test"))
      out["cloze_knowledge"] = self.answer_metrics(mixture, batches(cloze))["knowledge"]
    return out

  # --- Tasks ---

  def task(self, entry: str | Mapping, role: str):
    """Random-access records (`prompt`, `answer`) of a task's `train`, `dev` or `test` split."""
    return self._memo(("task", json.dumps(entry, sort_keys=True), role), lambda: self._task(entry, role))

  def _task(self, entry: str | Mapping, role: str):
    if is_world_task(entry):
      return self._world_builder.as_data_source(world_lib.TASKS[entry][role])
    if entry == SHAKESPEARE_TASK:
      return Rendered(tfds_text.open_dataset(shakespeare.TASK, self.data_dir).source(role), _SHAKESPEARE_PLAY)
    ds = tfds_text.open_dataset(entry["tfds"], entry["data_dir"])
    return Rendered(ds.source(entry[role]), tfds_text.Template(entry["prompt"], entry["answer"]))

  def task_metrics(
    self, entry: str | Mapping, mixture, test: list[dict], predictions: list[np.ndarray] | None = None
  ) -> dict[str, float]:
    """Metrics beyond test loss on a task's test batches: knowledge and behaviour for the world's, the
    generation metrics of a TFDS task that names them (`generation_metrics`).
    `predictions`: the test loss pass's most likely tokens (see `evaluate.loss_and_predictions`)."""
    if is_world_task(entry):
      return self.answer_metrics(mixture, test, predictions)
    return self.generation_metrics(entry, mixture, test) if generates(entry) else {}

  def generation_metrics(self, entry: Mapping, mixture, test: list[dict]) -> dict[str, float]:
    """A TFDS task's `metrics` of greedy answers to its test prompts, and `behaviour`, the fraction of
    answers that its `format` matches whole; answers and references are compared without the
    whitespace around them (templates often start an answer with a space)."""
    source = self.task(entry, "test")
    references = self._memo(
      ("references", id(source)), lambda: [source[i]["answer"].strip() for i in range(len(source))]
    )
    answers = self.answers(mixture, test, entry.get("max_answer_tokens", MAX_ANSWER_TOKENS))
    assert len(answers) == len(references), "generation_metrics takes the batches of the task's test split"
    out = {name: text_metrics.METRICS[name](answers, references) for name in entry.get("metrics", ())}
    if "format" in entry:
      out["behaviour"] = text_metrics.format_rate(answers, entry["format"])
    return out

  def answers(self, mixture, batches: list[dict], max_tokens: int) -> list[str]:
    """The greedy answers, as text, to the prompts of evaluation batches' real rows (in order): at
    most `max_tokens` tokens, ended by the end token."""
    out = []
    for batch in batches:
      tokens_BxT = evaluate.generate_answers(mixture, batch, max_tokens)
      for tokens in tokens_BxT[np.flatnonzero(batch["valid"])]:
        ends = np.flatnonzero(tokens == self.tok.eos)
        out.append(self.tok.decode(tokens[: ends[0] if len(ends) else len(tokens)]).strip())
    return out

  def answer_metrics(
    self, mixture, batches: list[dict], predictions: list[np.ndarray] | None = None
  ) -> dict[str, float]:
    """Knowledge and behaviour of greedy one-word answers (the world's tasks)."""
    tok = self.world_tokenizer
    value_ids = {
      i: np.asarray([tok.token_to_id(v) for v in self.world.values[attr]])
      for i, attr in enumerate(world_lib.ATTRIBUTES)
    }
    return evaluate.answer_metrics(mixture, batches, value_ids, tok.token_to_id(world_lib.EOS), 1, predictions)


def check_task(entry: str | Mapping, where: str, tokenizer_spec: str, data_dir: str | None = None) -> str:
  """Raises ValueError, naming `where`, unless `entry` is a task these sources can read; returns its name."""
  if isinstance(entry, str):
    if entry in world_lib.TASKS:
      if tokenizer_spec != "world":
        raise ValueError(
          f"{where}={entry!r}, a world task, is scored word by word: it needs "
          f"data.tokenizer='world', not {tokenizer_spec!r}"
        )
      return entry
    if entry == SHAKESPEARE_TASK:
      _check_real_text(where, entry, tokenizer_spec)
      return entry
    raise ValueError(
      f"{where}={entry!r} is not a task; allowed: {sorted(world_lib.TASKS) + [SHAKESPEARE_TASK]}, "
      f"or a TFDS task {{{', '.join(TFDS_TASK_FIELDS)}}}"
    )
  spec = _dict_fields(entry, TFDS_TASK_FIELDS, where, TFDS_TASK_OPTIONAL)
  _check_real_text(where, spec["name"], tokenizer_spec)
  ds = tfds_text.open_dataset(spec["tfds"], spec["data_dir"])
  for role in ("train", "dev", "test"):
    try:
      ds.num_examples(spec[role])
    except ValueError as e:
      raise ValueError(f"{where}.{role}: {e}") from None
  _checked_template(ds, tfds_text.Template(spec["prompt"], spec["answer"]), where)
  if not spec["name"] or spec["name"] in world_lib.TASKS or spec["name"] == SHAKESPEARE_TASK:
    raise ValueError(f"{where}.name={spec['name']!r}; allowed: a new, non-empty name")
  _check_generation(spec, where)
  return spec["name"]


def _check_generation(spec: Mapping, where: str) -> None:
  """Raises ValueError, naming the field, unless a TFDS task's optional generation fields are valid."""
  metrics, allowed = spec.get("metrics", ()), sorted(text_metrics.METRICS)
  if not isinstance(metrics, (list, tuple)):
    raise ValueError(f"{where}.metrics={metrics!r}; allowed: a list of names from {allowed}")
  for name in metrics:
    if name not in text_metrics.METRICS:
      raise ValueError(f"{where}.metrics contains {name!r}; allowed: {allowed}")
  if "format" in spec:
    try:
      re.compile(spec["format"])
    except (re.error, TypeError) as e:
      raise ValueError(
        f"{where}.format={spec['format']!r} is not a regular expression ({e}); allowed: one that "
        "a well-formed answer matches whole"
      ) from None
  if "max_answer_tokens" in spec:
    n = spec["max_answer_tokens"]
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
      raise ValueError(f"{where}.max_answer_tokens={n!r}; allowed: a positive integer")
    if not generates(spec):
      raise ValueError(
        f"{where}.max_answer_tokens={n} with no metrics and no format: no answer is generated; "
        "allowed: with metrics or format, or left out"
      )


def _check_real_text(where: str, name: str, tokenizer_spec: str) -> None:
  if tokenizer_spec == "world":
    raise ValueError(
      f"{where}: task {name!r} is real text, which the world's word tokenizer cannot read; "
      "allowed: data.tokenizer='shakespeare', a tokenizer folder, or model.checkpoints"
    )


def task_size(entry: str | Mapping, world: world_lib.WorldConfig) -> int:
  """Examples in a task's training split (the largest D_f it allows)."""
  if is_world_task(entry):
    return world_lib.task_size(world, entry)
  if entry == SHAKESPEARE_TASK:
    return len(shakespeare.records("play", "train"))
  return tfds_text.open_dataset(entry["tfds"], entry["data_dir"]).num_examples(entry["train"])


def check_corpus(entry: str | Mapping, where: str = "data.corpus") -> None:
  """Raises ValueError, naming `where`, unless `entry` is a corpus these sources can read."""
  if isinstance(entry, str):
    if entry not in ("world", "shakespeare"):
      raise ValueError(
        f"{where}={entry!r}; allowed: 'world', 'shakespeare', or a TFDS corpus {{{', '.join(TFDS_CORPUS_FIELDS)}}}"
      )
    return
  spec = _dict_fields(entry, TFDS_CORPUS_FIELDS, where)
  ds = tfds_text.open_dataset(spec["tfds"], spec["data_dir"])
  for role in ("train", "heldout"):
    try:
      ds.num_examples(spec[role])
    except ValueError as e:
      raise ValueError(f"{where}.{role}: {e}") from None
  _checked_template(ds, tfds_text.Template("", spec["text"]), where)
