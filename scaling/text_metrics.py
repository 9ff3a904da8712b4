"""Metrics of generated answers against reference answers, one reference per answer.

Every metric takes a list of predicted strings and the list of their references and returns a
fraction in [0, 1]: the mean over examples for `exact_match`, `f1` and `rouge_l`, the corpus-level
score divided by 100 for `chrf` and `bleu` (sacrebleu reports 0..100). A task chooses metrics by
their names in `METRICS`; `format_rate` is the fraction of answers that a regular expression matches.
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Callable, Sequence

from sacrebleu.metrics import BLEU, CHRF

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
  """Lower case, without punctuation, the articles a/an/the or repeated whitespace: SQuAD's normalisation."""
  # The official SQuAD v1.1 evaluation script's normalize_answer, step for step: no well-kept
  # package offers it alone (Hugging Face `evaluate` fetches its metric scripts from the Hub at run
  # time, torchmetrics needs PyTorch).
  text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
  return " ".join(_ARTICLES.sub(" ", text).split())


def _pairs(predictions: Sequence[str], references: Sequence[str]) -> list[tuple[str, str]]:
  if len(predictions) != len(references) or not predictions:
    raise ValueError(
      f"{len(predictions)} predictions and {len(references)} references; allowed: as many of each, at least one"
    )
  return list(zip(predictions, references))


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
  """Fraction of predictions equal to their reference after `normalize_answer` (SQuAD's exact match)."""
  pairs = _pairs(predictions, references)
  return sum(normalize_answer(p) == normalize_answer(r) for p, r in pairs) / len(pairs)


def _token_f1(prediction: str, reference: str) -> float:
  """SQuAD v1.1's f1_score: the harmonic mean of precision and recall of normalised words."""
  predicted, true = normalize_answer(prediction).split(), normalize_answer(reference).split()
  same = sum((collections.Counter(predicted) & collections.Counter(true)).values())
  if same == 0:  # As in v1.1, also when both are empty.
    return 0.0
  precision, recall = same / len(predicted), same / len(true)
  return 2 * precision * recall / (precision + recall)


def f1(predictions: Sequence[str], references: Sequence[str]) -> float:
  """Mean token F1 of each prediction against its reference (SQuAD's F1)."""
  pairs = _pairs(predictions, references)
  return sum(_token_f1(p, r) for p, r in pairs) / len(pairs)


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
  """Mean ROUGE-L F-measure of each prediction against its reference (rouge-score, no stemming; its
  tokenizer keeps only ASCII letters and digits)."""
  from rouge_score import rouge_scorer  # Its import of nltk takes a second and more: only where it is used.

  scorer = rouge_scorer.RougeScorer(["rougeL"])
  pairs = _pairs(predictions, references)
  return sum(scorer.score(r, p)["rougeL"].fmeasure for p, r in pairs) / len(pairs)


def chrf(predictions: Sequence[str], references: Sequence[str]) -> float:
  """Corpus chrF (sacrebleu's defaults: character 6-grams, beta 2), as a fraction."""
  pairs = _pairs(predictions, references)
  return CHRF().corpus_score([p for p, _ in pairs], [[r for _, r in pairs]]).score / 100


def bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
  """Corpus BLEU (sacrebleu's defaults: 13a tokenization, exponential smoothing), as a fraction."""
  pairs = _pairs(predictions, references)
  return BLEU().corpus_score([p for p, _ in pairs], [[r for _, r in pairs]]).score / 100


def format_rate(predictions: Sequence[str], pattern: str) -> float:
  """Fraction of predictions that the regular expression `pattern` matches whole (`re.fullmatch`)."""
  if not predictions:
    raise ValueError("no predictions; allowed: at least one")
  compiled = re.compile(pattern)
  return sum(compiled.fullmatch(p) is not None for p in predictions) / len(predictions)


METRICS: dict[str, Callable[[Sequence[str], Sequence[str]], float]] = {
  "exact_match": exact_match,
  "f1": f1,
  "rouge_l": rouge_l,
  "chrf": chrf,
  "bleu": bleu,
}
