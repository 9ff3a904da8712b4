"""The smoke study: a complete fine-tuning scaling study that runs on a laptop CPU in minutes.

Four base sizes are pretrained on the synthetic world's biographies, and each is fully fine-tuned
on nested subsets of the `qa` task. Emulated fine-tuning then recombines every base N1 with every
fine-tune N2 (at the smallest and largest D_f, three betas) to ask which scale buys knowledge
and which buys behaviour. Override any field from the command line, for example
`python -m launch.local --config configs/smoke.py --config.finetune.seeds='(0,1,2)'`.
"""

import ml_collections

from scaling import study


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = "smoke"
  # The corpus asks about training people in a "Q : ... A :" format: the bases can be prompted.
  c.world = {"seed": 0, "num_people": 200, "bio_renderings": 8, "heldout_renderings": 2, "question_renderings": 4}
  c.model = {"sizes": ("d16l2", "d32l2", "d48l2", "d64l2"), "block": {"norm": "rms", "mlp": "swiglu"}}
  c.pretrain = {
    "seed": 0,
    "steps": (1200,),
    "train": {"batch_size": 32, "seq_len": 48, "learning_rate": 3e-3, "warmup_steps": 50, "checkpoint_every": 600},
  }
  c.finetune = {
    "tasks": ("qa",),
    "methods": ("full",),
    "d_f": (40, 80, 160, 320, 640),
    "seeds": (0,),
    "train": {
      "batch_size": 32,
      "seq_len": 16,
      "learning_rate": 1e-3,
      "warmup_steps": 10,
      "max_steps": 600,
      "eval_every": 20,
      "patience": 3,
      "checkpoint_every": 200,
    },
  }
  # Pairs: every ordered pair of sizes; D_f: the smallest and the largest fine-tune's.
  c.eft = {"enabled": True, "betas": (0.5, 1.0, 1.5)}
  c.mesh = {"shape": {"data": -1, "fsdp": 1, "tensor": 1}}
  # Tuples, not lists: ml_collections overrides tuples from the command line. Resolved, so that
  # every study field (not only those set here) can be overridden.
  return study.resolve(c)
