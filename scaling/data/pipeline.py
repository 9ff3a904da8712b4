"""Records -> fixed-length token arrays; grain datasets whose batch for a step is `ds[step]`.

A batch is a dict of (B, L) arrays: `inputs`, `targets` (inputs shifted by one), `weights` (1 on
scored target tokens: the answer and its end token), and per example `prompt_len` (tokens before
the answer, counting <bos>), `answer_len` and `attribute` (index into world.ATTRIBUTES, -1 none).
Because a batch is indexed by step, resuming training needs no iterator state.
"""

from __future__ import annotations

import grain
import numpy as np
from tokenizers import Tokenizer

from scaling.data import world as world_lib

_ATTRS = list(world_lib.ATTRIBUTES)


def _text(x) -> str:
  return x.decode() if isinstance(x, bytes) else str(x)


class Encoder:
  """Turns one record into fixed-length arrays; rejects records that do not fit."""

  def __init__(self, tok: Tokenizer, seq_len: int):
    self.tok, self.seq_len = tok, seq_len
    self.bos, self.eos, self.pad = (tok.token_to_id(t) for t in (world_lib.BOS, world_lib.EOS, world_lib.PAD))

  def token_ids(self, record: dict) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids) of a record."""
    prompt = self.tok.encode(_text(record["prompt"])).ids if _text(record["prompt"]) else []
    return prompt, self.tok.encode(_text(record["answer"])).ids

  def __call__(self, record: dict) -> dict[str, np.ndarray]:
    prompt, answer = self.token_ids(record)
    ids = [self.bos, *prompt, *answer, self.eos]
    if len(ids) > self.seq_len + 1:
      raise ValueError(f"an example has {len(ids) - 1} tokens; seq_len={self.seq_len} is too short")
    tokens = np.full(self.seq_len + 1, self.pad, np.int32)
    tokens[: len(ids)] = ids
    scored = np.zeros(self.seq_len + 1, np.float32)
    scored[1 + len(prompt): len(ids)] = 1.0  # Answer tokens and the end token.
    attr = _text(record["attribute"])
    return {"inputs": tokens[:-1], "targets": tokens[1:], "weights": scored[1:],
            "prompt_len": np.int32(1 + len(prompt)), "answer_len": np.int32(len(answer)),
            "attribute": np.int32(_ATTRS.index(attr) if attr else -1)}


def nested_subset(source, size: int | None, seed: int) -> grain.MapDataset:
  """The first `size` records of a seeded permutation: subsets of one seed are nested."""
  ds = grain.MapDataset.source(source)
  if size is None:
    return ds
  if size > len(ds):
    raise ValueError(f"subset of {size} examples from a split of {len(ds)}")
  return ds.shuffle(seed=seed)[:size]


def train_batches(source, encoder: Encoder, batch_size: int, seed: int,
                  subset: int | None = None, subset_seed: int = 0) -> grain.MapDataset:
  """An endless, per-epoch reshuffled dataset of batches; `ds[step]` is the batch of that step."""
  ds = nested_subset(source, subset, subset_seed)
  return ds.map(encoder).shuffle(seed=seed).repeat().batch(batch_size, drop_remainder=True)


def eval_batches(source, tok: Tokenizer, batch_size: int) -> list[dict]:
  """A whole split as batches of the shortest length (a multiple of 8) that fits every example.

  The last batch is padded with zero-weight copies of the first example (`valid` marks real ones).
  """
  records = [source[i] for i in range(len(source))]
  longest = max(sum(map(len, Encoder(tok, 1).token_ids(r))) for r in records) + 1
  encoder = Encoder(tok, -(-longest // 8) * 8)
  examples = [encoder(r) for r in records]
  n = len(examples)
  valid = [1.0] * n
  while len(examples) % batch_size:
    examples.append(examples[0])
    valid.append(0.0)
  out = []
  for start in range(0, len(examples), batch_size):
    chunk = examples[start: start + batch_size]
    batch = {k: np.stack([e[k] for e in chunk]) for k in chunk[0]}
    batch["valid"] = np.asarray(valid[start: start + batch_size], np.float32)
    batch["weights"] = batch["weights"] * batch["valid"][:, None]
    out.append(batch)
  return out
