"""The settings of one training run (optimiser, schedule, bookkeeping), checked before any training."""

from __future__ import annotations

import dataclasses
from typing import Literal


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Optimisation and bookkeeping of one training run."""

  batch_size: int = 32
  seq_len: int = 48
  learning_rate: float = 3e-3
  min_lr_ratio: float = 0.1  # Cosine decays to this fraction of the peak.
  warmup_steps: int = 50
  max_steps: int = 1000
  schedule: Literal["cosine", "constant"] = "cosine"
  weight_decay: float = 0.1
  grad_clip: float = 1.0
  b1: float = 0.9
  b2: float = 0.95
  checkpoint_every: int = 200
  log_every: int = 10
  eval_every: int = 0  # Dev loss every eval_every steps and at max_steps; 0: none, and no early stopping.
  patience: int = 3

  def validate(self, prefix: str = "train") -> None:
    """Raises ValueError naming the field if a value is out of range."""
    if self.schedule not in ("cosine", "constant"):
      raise ValueError(f"{prefix}.schedule={self.schedule!r}; allowed: 'cosine', 'constant'")
    for field in ("batch_size", "seq_len", "max_steps", "checkpoint_every", "log_every"):
      if getattr(self, field) < 1:
        raise ValueError(f"{prefix}.{field}={getattr(self, field)}; allowed: a positive integer")
    if self.learning_rate <= 0:
      raise ValueError(f"{prefix}.learning_rate={self.learning_rate}; allowed: > 0")
    if self.eval_every < 0 or self.patience < 1:
      raise ValueError(
        f"{prefix}.eval_every={self.eval_every}, {prefix}.patience={self.patience}; "
        "allowed: eval_every >= 0 and patience >= 1"
      )
    bounds = (
      ("warmup_steps", self.warmup_steps >= 0, ">= 0"),
      ("weight_decay", self.weight_decay >= 0, ">= 0"),
      ("min_lr_ratio", 0 <= self.min_lr_ratio <= 1, "0 to 1"),
      ("b1", 0 <= self.b1 < 1, "0 <= b1 < 1"),
      ("b2", 0 <= self.b2 < 1, "0 <= b2 < 1"),
      ("grad_clip", self.grad_clip > 0, "> 0 (the largest global norm of the gradient)"),
    )
    for field, ok, allowed in bounds:
      if not ok:
        raise ValueError(f"{prefix}.{field}={getattr(self, field)}; allowed: {allowed}")
