"""A ladder of larger bases for a TPU pod slice: about 0.3B, 1.2B and 2.5B parameters.

FSDP over 8 ways and tensor parallelism over 2 (16 chips: a v5p-32 slice); parameters and
optimiser state are sharded, activations split over the batch. Check that it fits before paying
for the slice:

    python -m launch.check --config configs/pod_ladder.py --topology v5p-32   # needs '.[tpu]'
"""

import ml_collections

from scaling import study


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = "pod_ladder"
  c.world = {"seed": 0, "num_people": 20000, "bio_renderings": 8, "heldout_renderings": 2, "question_renderings": 4}
  c.model = {
    "sizes": ("d1024l24", "d2048l24", "d2560l32"),
    "block": {"norm": "rms", "mlp": "swiglu", "compute_dtype": "bfloat16"},
  }
  c.pretrain = {
    "seeds": (0,),
    "steps": (20000,),
    "train": {"batch_size": 256, "seq_len": 48, "learning_rate": 3e-4, "warmup_steps": 500, "checkpoint_every": 1000},
  }
  c.finetune = {
    "tasks": ("qa",),
    "methods": ("full",),
    "d_f": (1000, 4000, 16000, 64000),
    "seeds": (0,),
    "train": {
      "batch_size": 64,
      "seq_len": 16,
      "learning_rate": 1e-4,
      "warmup_steps": 50,
      "max_steps": 4000,
      "eval_every": 100,
      "patience": 3,
      "checkpoint_every": 500,
    },
  }
  c.eft = {"enabled": True, "d_f": (1000, 64000), "betas": (0.5, 1.0, 1.5)}
  c.eval = {"batch_size": 512}
  c.mesh = {"shape": {"data": 1, "fsdp": 8, "tensor": 2}}
  return study.resolve(c)
