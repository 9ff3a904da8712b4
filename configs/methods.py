"""The methods study: the qa world and bases, fine-tuned by every method at a few sizes of P.

Full tuning (all layers, and the first layer only), LoRA at ranks 2, 8 and 32, prompt tuning with
4 and 16 vectors, LoReFT at ranks 1 and 4 (these two at a learning rate of 1e-2, ten times the
others': they train few parameters from a neutral start), and SVF, each on the `qa` task at five
D_f. Each full fine-tune at the largest D_f is also evaluated with its lower or upper blocks reset
to the base (transplants). The report compares the methods' exponents over N (alpha_m) and over P
(alpha_t), how much each forgets of the pretraining domain, and where in depth fine-tuning acts.
`make study CONFIG=configs/methods.py WORKDIR=runs/methods`.
"""

import ml_collections

from configs import qa
from scaling import study


def get_config() -> ml_collections.ConfigDict:
  c = qa.get_config()
  c.name = "methods"
  c.finetune.methods = (
    "full",
    {"name": "full", "layers": (0, 1)},
    {"name": "lora", "rank": (2, 8, 32)},
    {"name": "prompt", "length": (4, 16), "learning_rate": 1e-2},
    {"name": "reft", "rank": (1, 4), "learning_rate": 1e-2},
    "svf",
  )
  c.eft.enabled = False
  c.transplant.enabled = True
  return study.resolve(c)
