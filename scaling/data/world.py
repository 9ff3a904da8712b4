"""The synthetic world: people with attributes, their biographies, and questions about them.

Everything is a deterministic function of `WorldConfig`. Every person but the new ones appears in
the pretraining corpus; question answering trains on some people and tests on held-out ones, so
answering well needs knowledge stored in pretraining and the answer format learned in
fine-tuning. The corpus may also hold questions about training people in another format
(`question_renderings`). The drawn tasks ask about everyone (`trivia`) or about new people in no
pretraining text (`inject`), with test questions drawn as the training ones are.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator

import numpy as np

BOS, EOS, PAD, UNK = "<bos>", "<eos>", "<pad>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)

# attribute -> (number of values, biography sentence templates, question template).
ATTRIBUTES: dict[str, tuple[int, tuple[str, ...], str]] = {
  "birth_city": (
    40,
    ("{name} was born in {v} .", "{name} came into the world in {v} .", "the birthplace of {name} is {v} ."),
    "where was {name} born ?",
  ),
  "birth_year": (
    50,
    ("{name} was born in the year {v} .", "{name} entered life in {v} .", "the birth year of {name} is {v} ."),
    "in what year was {name} born ?",
  ),
  "university": (
    30,
    ("{name} studied at {v} .", "{name} graduated from {v} .", "{name} received a degree from {v} ."),
    "which university did {name} attend ?",
  ),
  "employer": (
    40,
    ("{name} works for {v} .", "{name} is employed by {v} .", "the employer of {name} is {v} ."),
    "who employs {name} ?",
  ),
  "field": (
    20,
    ("{name} works in the field of {v} .", "{name} specialises in {v} .", "the research area of {name} is {v} ."),
    "what field does {name} work in ?",
  ),
}
# Cloze probes end where a template's value begins, so a template whose text before the value begins
# another attribute's sentence has two right continuations ("X was born in" a city, or "the year"):
# each attribute is probed with its other templates.
CLOZE_TEMPLATES: dict[str, tuple[str, ...]] = {
  attr: tuple(
    t
    for t in templates
    if not any(
      other.startswith(t.split("{v}")[0]) for a, (_, others, _) in ATTRIBUTES.items() if a != attr for other in others
    )
  )
  for attr, (_, templates, _) in ATTRIBUTES.items()
}
QA_PREFIX, QA_SUFFIX = "question :", "answer :"
# Question-shaped pretraining text, in a format other than the fine-tuning task's.
PRETRAIN_Q, PRETRAIN_A = "Q :", "A :"
# task -> its train, dev and test splits. `qa_wrong` asks `qa`'s questions with wrong answers (each
# replaced by another value of its attribute, seeded) and is tested on the right ones: a fine-tune
# on it can learn the answer format, but no facts. The drawn tasks draw their training and test
# questions alike, with replacement, so a test question may repeat a training one, as in real
# question-answering sets: `trivia` asks about the world's people as often as they are written
# about (a fact the base stored or the fine-tune saw can be answered: fine-tuning data stands in for
# what a small base does not know), `inject` about new people, who are in no pretraining text (what
# is known of them, a fine-tune learned from its own examples).
TASKS: dict[str, dict[str, str]] = {
  "qa": {"train": "qa_train", "dev": "qa_dev", "test": "qa_test"},
  "qa_wrong": {"train": "qa_train_wrong", "dev": "qa_dev_wrong", "test": "qa_test"},
  "inject": {"train": "inject_train", "dev": "inject_dev", "test": "inject_test"},
  "trivia": {"train": "trivia_train", "dev": "trivia_dev", "test": "trivia_test"},
}
DRAWN_TASKS = ("inject", "trivia")
SPLITS = (
  "pretrain",
  "pretrain_heldout",
  "qa_train",
  "qa_dev",
  "qa_test",
  "cloze_test",
  "qa_train_wrong",
  "qa_dev_wrong",
  "inject_train",
  "inject_dev",
  "inject_test",
  "trivia_train",
  "trivia_dev",
  "trivia_test",
)
POPULARITY_FIELDS = ("zipf", "question_draws", "train_questions")
NEW_PEOPLE_FIELDS = ("new_people", "new_zipf")
# Fields that only the tasks read: the pretraining text and the bases' own metrics do not depend on them.
TASK_ONLY_FIELDS = ("train_questions", "new_zipf", "answer_noise")
_SYLLABLES = tuple(c + v for c in "bdfghklmnprstvz" for v in "aeiou")


@dataclasses.dataclass(frozen=True)
class WorldConfig:
  """What makes a world: its seed, its people, and how its corpus is rendered."""

  seed: int = 0
  num_people: int = 400
  bio_renderings: int = 8  # Distinct renderings of each biography in the pretraining corpus.
  heldout_renderings: int = 2  # Fresh renderings of test people's biographies, never trained on.
  # Question-shaped documents per training-split person in the pretraining corpus ("Q : ... A :",
  # not the task's format): bases that have seen questions can be prompted with one, as real
  # ones can. Test people's facts are still only in their biographies.
  question_renderings: int = 0
  dev_fraction: float = 0.1
  test_fraction: float = 0.25
  # How often people are written and asked about. 0: every person has `bio_renderings`
  # biographies and is asked each question once. s > 0: the person of popularity rank r (a seeded
  # order) has max(1, round(bio_renderings * r^-s)) biographies, and questions follow the people's
  # shares of biographies: the dev, test and cloze splits are `question_draws` questions each
  # (drawn with replacement), the training split `train_questions` distinct ones. A base of
  # capacity C knows the most mentioned people, and the mass of questions it cannot answer falls as
  # a power of C.
  zipf: float = 0.0
  question_draws: int = 500
  train_questions: int = 1000
  # The drawn tasks (`trivia`, `inject`) draw `train_questions` training and `question_draws` dev
  # and test questions each. People in no pretraining text, asked about by the `inject` task: the
  # new person of rank r is asked about in proportion to r^-new_zipf, so the share of test
  # questions that D_f training ones miss falls as a power of D_f.
  new_people: int = 0
  new_zipf: float = 1.5
  # The share of the drawn tasks' answers (training, dev and test alike) replaced by another value
  # of the attribute, as annotation errors are in real question-answering sets: no model can score
  # such answers better than by their entropy, a floor under the test loss (the laws' E). At 0.1
  # that is 0.68 nats a question, 0.34 a scored token (the value and the end token).
  answer_noise: float = 0.0

  def validate(self) -> None:
    """Raises ValueError naming the field if the world cannot be built."""
    if self.num_people < 10:
      raise ValueError(f"world.num_people={self.num_people}; allowed: at least 10")
    if self.bio_renderings < 1 or self.heldout_renderings < 1:
      raise ValueError("world.bio_renderings and world.heldout_renderings must be at least 1")
    if self.zipf < 0:
      raise ValueError(f"world.zipf={self.zipf}; allowed: 0 (every person mentioned alike) or more")
    if self.question_draws < 1 or self.train_questions < 1:
      raise ValueError(
        f"world.question_draws={self.question_draws}, world.train_questions={self.train_questions}: "
        "each must be at least 1"
      )
    if self.new_people < 0 or self.new_zipf < 0:
      raise ValueError(f"world.new_people={self.new_people}, world.new_zipf={self.new_zipf}: each must be at least 0")
    if not 0 <= self.answer_noise < 1:
      raise ValueError(f"world.answer_noise={self.answer_noise}; allowed: 0 (no noise) up to but not 1")
    if self.question_renderings < 0:
      raise ValueError(f"world.question_renderings={self.question_renderings}; allowed: 0 or more")
    if not (0 < self.dev_fraction and 0 < self.test_fraction and self.dev_fraction + self.test_fraction < 1):
      raise ValueError(
        f"world.dev_fraction={self.dev_fraction}, world.test_fraction={self.test_fraction}: "
        "each must be positive and their sum below 1"
      )

  def spec(self) -> dict:
    """The fields that make this world, for run ids: popularity's, new people's and answer noise
    only where they change it, so that the ids of worlds without them stay as they were."""
    fields, default = dataclasses.asdict(self), WorldConfig()
    omit = {"answer_noise"} if self.answer_noise == 0 else set()
    if self.new_people == 0:
      omit.update(NEW_PEOPLE_FIELDS)
    if self.zipf == 0:
      omit.add("zipf")
      if self.new_people == 0:
        omit.update(name for name in POPULARITY_FIELDS[1:] if fields[name] == getattr(default, name))
    return {name: value for name, value in fields.items() if name not in omit}

  def pretraining_spec(self) -> dict:
    """The fields that make this world's pretraining text and its bases' metrics, for the bases' run
    ids: `spec()` without TASK_ONLY_FIELDS, so that worlds that differ only in those share bases."""
    return {name: value for name, value in self.spec().items() if name not in TASK_ONLY_FIELDS}

  def fingerprint(self) -> str:
    """A short stable hash of the config: the TFDS config name of this world."""
    blob = json.dumps(self.spec(), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


@dataclasses.dataclass(frozen=True)
class World:
  """The generated people and the word lists the world speaks."""

  config: WorldConfig
  names: tuple[str, ...]  # "first last", one per person.
  values: dict[str, tuple[str, ...]]  # attribute -> its possible values.
  facts: np.ndarray  # (num_people, num_attributes) value indices.
  split_of_person: np.ndarray  # 0 train, 1 dev, 2 test, 3 new (in no pretraining text).
  mentions: np.ndarray  # Biographies of each person in the pretraining corpus.

  def vocabulary(self) -> list[str]:
    """Every word the world can say, special tokens first, in a fixed order."""
    words: dict[str, None] = dict.fromkeys(SPECIAL_TOKENS)
    templates = [t for _, ts, q in ATTRIBUTES.values() for t in (*ts, q)] + [
      QA_PREFIX,
      QA_SUFFIX,
      PRETRAIN_Q,
      PRETRAIN_A,
    ]
    for text in templates:
      words.update(dict.fromkeys(w for w in text.split() if w not in ("{name}", "{v}")))
    for name in self.names:
      words.update(dict.fromkeys(name.split()))
    for vals in self.values.values():
      words.update(dict.fromkeys(vals))
    return list(words)

  def value(self, person: int, attr: str) -> str:
    return self.values[attr][self.facts[person, list(ATTRIBUTES).index(attr)]]

  def biography(self, person: int, rng: np.random.Generator) -> str:
    """One rendering: a random template per attribute, sentences in random order."""
    sentences = [
      rng.choice(templates).format(name=self.names[person], v=self.value(person, attr))
      for attr, (_, templates, _) in ATTRIBUTES.items()
    ]
    return " ".join(sentences[i] for i in rng.permutation(len(sentences)))

  def people(self, split: int) -> np.ndarray:
    return np.flatnonzero(self.split_of_person == split)


def _words(rng: np.random.Generator, n: int, taken: set[str], syllables: int) -> tuple[str, ...]:
  out: list[str] = []
  while len(out) < n:
    word = "".join(rng.choice(_SYLLABLES, syllables))
    if word not in taken:
      taken.add(word)
      out.append(word)
  return tuple(out)


def _names(rng: np.random.Generator, n: int, taken: set[str]) -> tuple[str, ...]:
  """`n` distinct "first last" names from new first and last names."""
  side = int(np.ceil(np.sqrt(n))) + 2
  firsts, lasts = _words(rng, side, taken, 2), _words(rng, side, taken, 2)
  return tuple(f"{firsts[p // side]} {lasts[p % side]}" for p in rng.choice(side * side, n, replace=False))


def build_world(config: WorldConfig) -> World:
  """Generates the people, their names and attribute values, and the person splits."""
  config.validate()
  rng = np.random.default_rng(config.seed)
  taken: set[str] = set()
  values = {
    attr: (tuple(str(1950 + i) for i in range(n)) if attr == "birth_year" else _words(rng, n, taken, 3))
    for attr, (n, _, _) in ATTRIBUTES.items()
  }
  names = _names(rng, config.num_people, taken)
  facts = np.stack([rng.integers(0, n, config.num_people) for n, _, _ in ATTRIBUTES.values()], axis=1)
  n_dev, n_test = int(config.dev_fraction * config.num_people), int(config.test_fraction * config.num_people)
  split_of_person = np.zeros(config.num_people, np.int32)
  order = rng.permutation(config.num_people)
  split_of_person[order[:n_dev]], split_of_person[order[n_dev : n_dev + n_test]] = 1, 2
  # A stream of its own: the people, facts and splits of a world without popularity are unchanged.
  rank = np.random.default_rng([config.seed, 4]).permutation(config.num_people)
  mentions = mention_counts(config)[rank]
  if config.new_people:  # A stream of their own, appended: the world's own people stay as they were.
    new_rng = np.random.default_rng([config.seed, 7])
    names += _names(new_rng, config.new_people, taken)
    new_facts = np.stack([new_rng.integers(0, n, config.new_people) for n, _, _ in ATTRIBUTES.values()], axis=1)
    facts = np.concatenate([facts, new_facts])
    split_of_person = np.concatenate([split_of_person, np.full(config.new_people, 3, np.int32)])
    mentions = np.concatenate([mentions, np.zeros(config.new_people, np.int64)])
  return World(config, names, values, facts, split_of_person, mentions)


def mention_counts(config: WorldConfig) -> np.ndarray:
  """Biographies of the people by popularity rank: `bio_renderings` * r^-zipf, at least 1."""
  ranks = np.arange(1, config.num_people + 1, dtype=np.float64)
  return np.maximum(1, np.round(config.bio_renderings * ranks**-config.zipf)).astype(np.int64)


def records(world: World, split: str) -> Iterator[dict]:
  """The examples of one split: dicts of prompt, answer (the scored text), attribute, person.

  Biographies (and question documents) have an empty prompt, so a language model is scored on
  the whole text.
  """
  seed = world.config.seed
  if split in ("pretrain", "pretrain_heldout"):
    heldout = split == "pretrain_heldout"
    rng = np.random.default_rng([seed, 1 + heldout])
    people = world.people(2) if heldout else np.arange(len(world.names))
    reps = np.full(len(people), world.config.heldout_renderings) if heldout else world.mentions
    for r in range(int(reps.max())):
      for p in people[reps > r]:
        yield {"prompt": "", "answer": world.biography(p, rng), "attribute": "", "person": int(p)}
    if not heldout:
      for r in range(world.config.question_renderings):
        for p in world.people(0):
          attrs = rng.choice(list(ATTRIBUTES), 3, replace=False)
          text = " ".join(
            f"{PRETRAIN_Q} {ATTRIBUTES[a][2].format(name=world.names[p])} {PRETRAIN_A} {world.value(p, a)} ."
            for a in attrs
          )
          yield {"prompt": "", "answer": text, "attribute": "", "person": int(p)}
  elif split.startswith(("qa_", *(f"{task}_" for task in DRAWN_TASKS))):
    right = split.removesuffix("_wrong")
    drawn = split.rpartition("_")[0] in DRAWN_TASKS
    rng = np.random.default_rng([seed, 6, SPLITS.index(split)])
    for p, attr in questions(world, right):
      prompt = f"{QA_PREFIX} {ATTRIBUTES[attr][2].format(name=world.names[p])} {QA_SUFFIX}"
      answer = world.value(p, attr)
      if right != split or (drawn and rng.random() < world.config.answer_noise):  # Another value, alike likely.
        others = [v for v in world.values[attr] if v != answer]
        answer = others[rng.integers(len(others))]
      yield {"prompt": prompt, "answer": answer, "attribute": attr, "person": int(p)}
  elif split == "cloze_test":
    rng = np.random.default_rng([seed, 3])
    for p, attr in questions(world, split):
      prefix = rng.choice(CLOZE_TEMPLATES[attr]).split("{v}")[0].format(name=world.names[p]).strip()
      yield {"prompt": prefix, "answer": world.value(p, attr), "attribute": attr, "person": int(p)}
  else:
    raise ValueError(f"unknown split {split!r}; allowed: {list(SPLITS)}")


def questions(world: World, split: str) -> list[tuple[int, str]]:
  """The (person, attribute) pairs a question split asks: each of its people's attributes once, or
  in a world with popularity, pairs drawn as the people are mentioned (the training split's
  distinct: a fine-tune's D_f counts distinct examples); a drawn task's, drawn with replacement."""
  task, _, role = split.rpartition("_")
  if task in DRAWN_TASKS:
    people, weight = _drawn(world, task)
    if not len(people):
      return []
    pairs = [(int(p), attr) for p in people for attr in ATTRIBUTES]
    rng = np.random.default_rng([world.config.seed, 8, SPLITS.index(split)])
    weight = np.repeat(weight, len(ATTRIBUTES))
    size = world.config.train_questions if role == "train" else world.config.question_draws
    return [pairs[i] for i in rng.choice(len(pairs), size, p=weight / weight.sum())]
  people = world.people({"qa_train": 0, "qa_dev": 1, "qa_test": 2, "cloze_test": 2}[split])
  pairs = [(int(p), attr) for p in people for attr in ATTRIBUTES]
  if world.config.zipf == 0:
    return pairs
  rng = np.random.default_rng([world.config.seed, 5, SPLITS.index(split)])
  weight = np.repeat(world.mentions[people], len(ATTRIBUTES)).astype(np.float64)
  train = split == "qa_train"
  size = min(world.config.train_questions, len(pairs)) if train else world.config.question_draws
  return [pairs[i] for i in rng.choice(len(pairs), size, replace=not train, p=weight / weight.sum())]


def _drawn(world: World, task: str) -> tuple[np.ndarray, np.ndarray]:
  """The people a drawn task asks about, and their weights: new people by rank, the world's own
  people by their biographies."""
  if task == "inject":
    people = world.people(3)
    return people, np.arange(1, len(people) + 1, dtype=np.float64) ** -world.config.new_zipf
  people = np.flatnonzero(world.split_of_person < 3)
  return people, world.mentions[people].astype(np.float64)


def splits(config: WorldConfig) -> tuple[str, ...]:
  """The splits this world has examples in (the `inject` task's only where it has new people)."""
  return tuple(split for split in SPLITS if split_size(config, split))


def task_size(config: WorldConfig, task: str) -> int:
  """Examples in a task's training split; ValueError, naming the field, if this world has none."""
  n = split_size(config, TASKS[task]["train"])
  if n == 0:
    raise ValueError(f"task {task!r} asks about new people, and world.new_people=0; allowed: at least 1")
  return n


def split_size(config: WorldConfig, split: str) -> int:
  """Number of examples in a split, without generating it."""
  n_dev, n_test = int(config.dev_fraction * config.num_people), int(config.test_fraction * config.num_people)
  n_train = config.num_people - n_dev - n_test
  asked = (lambda n: n * len(ATTRIBUTES)) if config.zipf == 0 else (lambda n: config.question_draws)
  per: dict[str, int] = {
    "pretrain": int(mention_counts(config).sum()) + n_train * config.question_renderings,
    "pretrain_heldout": n_test * config.heldout_renderings,
    "qa_train": n_train * len(ATTRIBUTES)
    if config.zipf == 0
    else min(config.train_questions, n_train * len(ATTRIBUTES)),
    "qa_dev": asked(n_dev),
    "qa_test": asked(n_test),
    "cloze_test": asked(n_test),
  }
  per["qa_train_wrong"], per["qa_dev_wrong"] = per["qa_train"], per["qa_dev"]
  per["inject_train"] = config.train_questions if config.new_people else 0
  per["inject_dev"] = per["inject_test"] = config.question_draws if config.new_people else 0
  per["trivia_train"] = config.train_questions
  per["trivia_dev"] = per["trivia_test"] = config.question_draws
  if split not in per:
    raise ValueError(f"unknown split {split!r}; allowed: {list(SPLITS)}")
  return per[split]
