"""Records -> fixed-length token arrays, and step-indexed batches of them.

A batch is a dict of (B, L) arrays: `inputs`, `targets` (inputs shifted by one), `weights` (1 on
scored target tokens: the answer and its end token), and per example `prompt_len` (tokens before
the answer, counting <bos>), `answer_len` and `attribute` (index into world.ATTRIBUTES, -1 none).
Splits are read through grain from the TFDS array_record source and encoded once; the world's
splits are small, so batches are then drawn from memory. Because a batch is indexed by step,
resuming training needs no iterator state.
"""

from __future__ import annotations

import grain
import numpy as np

from scaling.data import world as world_lib
from scaling.data.tokenizer import TextTokenizer

_ATTRS = list(world_lib.ATTRIBUTES)


def _text(x) -> str:
  return x.decode() if isinstance(x, bytes) else str(x)


class Encoder:
  """Turns one record into fixed-length arrays. A record that does not fit is rejected, or cut:
  `truncate` (pretraining text, real tasks' training) keeps its first seq_len + 1 tokens;
  `cut_prompt` (evaluation) first drops its prompt's first tokens after <bos>, so that the scored
  answer stays whole, and then keeps the first seq_len + 1 tokens (text without a prompt is cut as
  `truncate` cuts it)."""

  def __init__(self, tok: TextTokenizer, seq_len: int, truncate: bool = False, cut_prompt: bool = False):
    self.tok, self.seq_len, self.truncate, self.cut_prompt = tok, seq_len, truncate, cut_prompt
    self.bos, self.eos, self.pad = tok.bos, tok.eos, tok.pad

  def token_ids(self, record: dict) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids) of a record."""
    return self.tok.encode(_text(record["prompt"])), self.tok.encode(_text(record["answer"]))

  def __call__(self, record: dict) -> dict[str, np.ndarray]:
    prompt, answer = self.token_ids(record)
    if self.cut_prompt:
      excess = len(prompt) + len(answer) + 1 - self.seq_len  # Tokens past seq_len + 1, <bos> and <eos> included.
      prompt = prompt[max(excess, 0) :]
    ids = [self.bos, *prompt, *answer, self.eos]
    if len(ids) > self.seq_len + 1:
      if not (self.truncate or self.cut_prompt):
        raise ValueError(f"an example has {len(ids) - 1} tokens; seq_len={self.seq_len} is too short")
      ids = ids[: self.seq_len + 1]
    tokens = np.full(self.seq_len + 1, self.pad, np.int32)
    tokens[: len(ids)] = ids
    scored = np.zeros(self.seq_len + 1, np.float32)
    scored[1 + len(prompt) : len(ids)] = 1.0  # Answer tokens and the end token.
    attr = _text(record.get("attribute", ""))
    return {
      "inputs": tokens[:-1],
      "targets": tokens[1:],
      "weights": scored[1:],
      "prompt_len": np.int32(1 + len(prompt)),
      "answer_len": np.int32(len(answer)),
      "attribute": np.int32(_ATTRS.index(attr) if attr else -1),
    }


def encode_split(source, encoder: Encoder, indices: np.ndarray | None = None) -> dict[str, np.ndarray]:
  """Reads a split (or only its records at `indices`) through grain and encodes it: arrays with a
  leading example axis."""
  if indices is None:
    examples = list(grain.MapDataset.source(source).map(encoder))
  else:
    examples = list(grain.MapDataset.range(len(indices)).map(lambda j: encoder(source[int(indices[j])])))
  return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


def nested_subset(num_examples: int, size: int | None, seed: int) -> np.ndarray:
  """Indices of the first `size` examples of a seeded permutation: subsets of one seed are nested."""
  if size is None:
    return np.arange(num_examples)
  if size > num_examples:
    raise ValueError(f"subset of {size} examples from a split of {num_examples}")
  return np.random.default_rng(seed).permutation(num_examples)[:size]


class StepBatches:
  """Batches of a fixed example set, reshuffled every epoch; `batches[step]` is step's batch.

  The example stream is the concatenation of seeded per-epoch permutations, so any step's batch
  is computed directly: resuming needs no iterator state.
  """

  def __init__(self, arrays: dict[str, np.ndarray], batch_size: int, seed: int, indices: np.ndarray | None = None):
    self.arrays, self.batch_size, self.seed = arrays, batch_size, seed
    self.indices = np.arange(len(next(iter(arrays.values())))) if indices is None else np.asarray(indices)
    self._perms: dict[int, np.ndarray] = {}

  def _perm(self, epoch: int) -> np.ndarray:
    if epoch not in self._perms:
      self._perms = {epoch: np.random.default_rng([self.seed, epoch]).permutation(len(self.indices))}
    return self._perms[epoch]

  def __getitem__(self, step: int) -> dict[str, np.ndarray]:
    return self.rows(step, slice(0, self.batch_size))

  def rows(self, step: int, part: slice) -> dict[str, np.ndarray]:
    """Rows `part` of step's batch: a host reads only the rows that its devices hold."""
    n = len(self.indices)
    positions = range(step * self.batch_size, (step + 1) * self.batch_size)[part]
    rows = self.indices[[self._perm(p // n)[p % n] for p in positions]]
    return {k: v[rows] for k, v in self.arrays.items()}


def train_batches(
  source, encoder: Encoder, batch_size: int, seed: int, subset: int | None = None, subset_seed: int = 0
) -> StepBatches:
  """Step-indexed training batches over a split, or over its nested subset of `subset` examples
  (only those are read: a subset of a large corpus costs its own size)."""
  indices = nested_subset(len(source), subset, subset_seed)
  return StepBatches(encode_split(source, encoder, indices), batch_size, seed)


def eval_batches(source, tok: TextTokenizer, batch_size: int, max_len: int | None = None) -> list[dict]:
  """A whole split as batches of the shortest length (a multiple of 8) that fits every example, or
  of `max_len` (the longest input that the models trained on; None: no limit) where an example is
  longer: such an example is cut as `Encoder`'s `cut_prompt` cuts it.

  The last batch is padded with zero-weight copies of the first example (`valid` marks real ones).
  """
  if max_len is not None and max_len < 1:
    raise ValueError(f"max_len={max_len!r}; allowed: a positive number of tokens, or None for no limit")
  longest = max(sum(map(len, Encoder(tok, 1).token_ids(source[i]))) for i in range(len(source))) + 1
  # Where every example fits, the batches are those of no limit, even if the multiple of 8 passes
  # max_len: the positions past it hold only padding, which no real token attends to.
  length = -(-longest // 8) * 8 if max_len is None or longest <= max_len else max_len
  arrays = encode_split(source, Encoder(tok, length, cut_prompt=True))
  n = len(arrays["inputs"])
  pad = -n % batch_size
  arrays = {k: np.concatenate([v, np.repeat(v[:1], pad, axis=0)]) for k, v in arrays.items()}
  arrays["valid"] = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)])
  arrays["weights"] = arrays["weights"] * arrays["valid"][:, None]
  return [{k: v[i : i + batch_size] for k, v in arrays.items()} for i in range(0, n + pad, batch_size)]
