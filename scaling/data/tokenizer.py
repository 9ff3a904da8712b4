"""A word-level tokenizer over a fixed vocabulary (Hugging Face `tokenizers`)."""

from __future__ import annotations

from tokenizers import Tokenizer, models, pre_tokenizers

from scaling.data.world import BOS, EOS, PAD, UNK


def word_tokenizer(vocabulary: list[str]) -> Tokenizer:
  """Splits on whitespace and maps each word to its index in `vocabulary`."""
  missing = [t for t in (PAD, BOS, EOS, UNK) if t not in vocabulary]
  if missing:
    raise ValueError(f"vocabulary lacks special tokens {missing}")
  tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocabulary)}, unk_token=UNK))
  tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  return tok


def padded_vocab_size(tok: Tokenizer, multiple: int = 64) -> int:
  """Model vocabulary size: the tokenizer's, rounded up so that it shards over any small mesh axis."""
  return -(-tok.get_vocab_size() // multiple) * multiple
