"""Tokenizers: the world's word tokenizer (Hugging Face `tokenizers`), and `TextTokenizer`, what the
pipeline needs of any tokenizer (the world's, a trained BPE, or a model folder's through transformers)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from tokenizers import Tokenizer, models, pre_tokenizers

from scaling.data.world import BOS, EOS, PAD, SPECIAL_TOKENS, UNK


@dataclasses.dataclass(frozen=True)
class TextTokenizer:
  """Ids of a text (no special tokens added) and text of ids (special tokens left out), the special
  tokens' ids, and the vocabulary size."""

  encode: Callable[[str], list[int]]
  bos: int
  eos: int
  pad: int
  size: int
  token_id: Callable[[str], int | None]  # The id of one token's text (None if it is not one token).
  decode: Callable[[Sequence[int]], str]


def word_tokenizer(vocabulary: list[str]) -> Tokenizer:
  """Splits on whitespace and maps each word to its index in `vocabulary`."""
  missing = [t for t in (PAD, BOS, EOS, UNK) if t not in vocabulary]
  if missing:
    raise ValueError(f"vocabulary lacks special tokens {missing}")
  tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocabulary)}, unk_token=UNK))
  tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  return tok


def from_tokenizers(tok: Tokenizer) -> TextTokenizer:
  """A `tokenizers.Tokenizer` whose vocabulary has the world's special tokens."""
  missing = [t for t in (PAD, BOS, EOS) if tok.token_to_id(t) is None]
  if missing:
    raise ValueError(f"the tokenizer lacks special tokens {missing}")
  # The world's word tokenizer does not mark its special tokens as special: they are left out by id.
  special = {tok.token_to_id(t) for t in SPECIAL_TOKENS} - {None}
  decode = lambda ids: tok.decode([int(i) for i in ids if int(i) not in special], skip_special_tokens=True)
  return TextTokenizer(
    lambda text: tok.encode(text).ids if text else [],
    tok.token_to_id(BOS),
    tok.token_to_id(EOS),
    tok.token_to_id(PAD),
    tok.get_vocab_size(),
    tok.token_to_id,
    decode,
  )


def from_transformers(tok) -> TextTokenizer:
  """A `transformers` tokenizer; one without a start or padding token uses its end token (as
  Pythia's, whose <|endoftext|> is all three)."""
  if tok.eos_token_id is None:
    raise ValueError(f"tokenizer {tok.name_or_path!r} has no end-of-text token (eos_token); allowed: one that has")
  eos = tok.eos_token_id
  bos = eos if tok.bos_token_id is None else tok.bos_token_id
  pad = eos if tok.pad_token_id is None else tok.pad_token_id
  return TextTokenizer(
    lambda text: tok(text, add_special_tokens=False)["input_ids"] if text else [],
    bos,
    eos,
    pad,
    len(tok),
    tok.convert_tokens_to_ids,
    lambda ids: tok.decode([int(i) for i in ids], skip_special_tokens=True),
  )


def padded_vocab_size(size: int, multiple: int = 64) -> int:
  """Model vocabulary size: a tokenizer's `size`, rounded up so that it shards over any small mesh axis."""
  return -(-size // multiple) * multiple
