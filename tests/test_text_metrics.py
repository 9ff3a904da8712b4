"""Generation metrics against the reference values of the libraries' own tests and of SQuAD's scorers."""

import pytest

from scaling import text_metrics

# (prediction, reference, exact match, F1).
SQUAD_CASES = [
  # torchmetrics' SQuAD tests (the official v1.1 script's scoring), a JSQuAD case: precision 2/2, recall 2/4.
  ("1976", "1976", 1.0, 1.0),
  ("2 時間 21 分", "2 時間", 0.0, 2 / 3),
  # AllenNLP's SquadEmAndF1 test: the articles go, 3 of the 4 remaining words are shared.
  ("this is the best span", "this is a good span", 0.0, 0.75),
  # Normalisation: case, punctuation, articles and runs of whitespace do not count.
  ("   Rock    n  Roll.", "rock n roll", 1.0, 1.0),
  ("The Cat!", "a cat", 1.0, 1.0),
  ("an apple", "the", 0.0, 0.0),  # Nothing left of the reference: v1.1 scores 0.
]


@pytest.mark.parametrize("prediction, reference, exact, f1", SQUAD_CASES)
def test_exact_match_and_f1_are_squads(prediction, reference, exact, f1):
  assert text_metrics.exact_match([prediction], [reference]) == exact
  assert text_metrics.f1([prediction], [reference]) == pytest.approx(f1)


def test_exact_match_and_f1_average_over_examples():
  predictions, references = [c[0] for c in SQUAD_CASES], [c[1] for c in SQUAD_CASES]
  assert text_metrics.exact_match(predictions, references) == pytest.approx(3 / 6)
  assert text_metrics.f1(predictions, references) == pytest.approx((3 + 2 / 3 + 0.75) / 6)
  assert text_metrics.normalize_answer('  The  Beatles\' "Let It Be"! ') == "beatles let it be"


def test_rouge_l_is_rouge_scores_f_measure():
  # rouge-score's rouge_scorer_test.py: testRougeLConsecutive, testRougeLNonConsecutive (F 4/5),
  # testRougeEmpty (0), and testRougeLAgainstRouge155 on the first lines of its testdata (ROUGE-1.5.5's F 0.51163).
  assert text_metrics.rouge_l(["testing one"], ["testing one two"]) == pytest.approx(4 / 5)
  assert text_metrics.rouge_l(["testing two"], ["testing one two"]) == pytest.approx(4 / 5)
  assert text_metrics.rouge_l([""], ["testing one two"]) == 0.0
  target = (
    "ZfbCUIUuePaiLVUlCaUXxkpu XPeWing tUHfPMuZ',-Xd Y BrUgVJing M-HV.-DgdDaY.rFDJCRing Ht-LM EKBDXkME,yz'RBr "
    "q'wtion wIojNbN wL,b .a-'XdQggyFl jB-RPP'iyOIcUxer tKM L\n"
  )
  prediction = "rFDJCRtion Ht-LM EKtDXkME,yz'RBr q'wer wrojNbN wL,b .a-'XdQggyFl jB-RPP'iyOIcUxi\n"
  assert text_metrics.rouge_l([prediction], [target]) == pytest.approx(0.51163, abs=1e-5)
  # The mean over examples.
  assert text_metrics.rouge_l(["testing one", ""], ["testing one two"] * 2) == pytest.approx(2 / 5)


def test_chrf_and_bleu_are_sacrebleus_corpus_scores_as_fractions():
  # sacrebleu's test_chrf.py (test_cases_effective_order: its default settings, where beta does
  # not matter as hypothesis and reference are of one length), scores / 100.
  for predictions, references, expected in [
    (["a b c"], ["abc"], 1.0),
    ([""], ["reference"], 0.0),
    (["a", "b"], ["a", "c"], 0.5),
    (["aa"], ["ab"], 0.25),
  ]:
    assert text_metrics.chrf(predictions, references) == pytest.approx(expected, abs=1e-6)
  # sacrebleu's test_sentence_bleu.py (issue #98, exp smoothing, 13a): 8.493 of a one-sentence corpus.
  ref = "producţia de zahăr brut se exprimă în zahăr alb;"
  hyp = "Producția de zahăr primă va fi exprimată în ceea ce privește zahărul alb;"
  assert text_metrics.bleu([hyp], [ref]) == pytest.approx(0.08493, abs=1e-5)
  # test_bleu.py: an exact match is 1; test_sentence_bleu.py (#141): no shared word is 0.
  assert text_metrics.bleu(["this is a test"], ["this is a test"]) == pytest.approx(1.0)
  assert text_metrics.bleu(["this is a cat"], ["okay thanks"]) == 0.0


def test_format_rate_counts_whole_matches():
  answers = ["Paris", "paris", "Paris, France", ""]
  assert text_metrics.format_rate(answers, r"[A-Z][a-z]+") == 0.25  # fullmatch: "Paris, France" is not.
  assert text_metrics.format_rate(answers, r"(?s).*") == 1.0
  assert text_metrics.format_rate(answers, r"[a-z]*") == 0.5


def test_metrics_table_and_mismatched_lists():
  assert sorted(text_metrics.METRICS) == ["bleu", "chrf", "exact_match", "f1", "rouge_l"]
  for name, metric in text_metrics.METRICS.items():
    assert metric(["a b c d"], ["a b c d"]) == pytest.approx(1.0), name
    with pytest.raises(ValueError, match="2 predictions and 1 references; allowed: as many of each"):
      metric(["a", "b"], ["a"])
