"""Pythia fine-tuned on WMT19 Chinese-to-English at several D_f (as Zhang et al. 2024 and Lin et al.
2024 did): the law L(N, D_f) over five Pythia sizes, and L(D_p, D_f) over pretraining steps of one.

Runnable once you have, in your own bucket or disk:
- The Pythia checkpoints as Hugging Face folders (config.json, safetensors weights, tokenizer.json),
  for example `huggingface-cli download EleutherAI/pythia-410m --revision step143000 --local-dir ...`
  (where a revision has only pytorch_model.bin, load and re-save it with transformers'
  `save_pretrained`, which writes safetensors). Set CHECKPOINTS below. Every Pythia size saw the
  same data in the same order, 2,097,152 tokens a step.
- WMT19 zh-en prepared by TFDS in array_record format, in DATA_DIR:
  `tfds build wmt19_translate/zh-en --file_format=array_record --data_dir=DATA_DIR`
  (this one step needs TensorFlow and the internet; the study reads it without either).
Then `python -m launch.local --config configs/pythia_wmt.py --workdir gs://BUCKET/studies/pythia_wmt`,
or a TPU/GKE launcher (python -m launch.tpu ..., python -m launch.gke ...).
"""

import ml_collections

from scaling import study

CHECKPOINTS = "gs://YOUR_BUCKET/pythia"  # Holds pythia-<size>/step<step>/ folders.
DATA_DIR = "gs://YOUR_BUCKET/tensorflow_datasets"
TOKENS_PER_STEP = 2_097_152  # Pythia: 1024 sequences of 2048 tokens.
SIZES = ("70m", "160m", "410m", "1b", "1.4b")
STEPS = (13000, 36000, 71000, 143000)  # For the D_p axis, on pythia-410m.


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = "pythia_wmt"
  final = [
    {"name": f"pythia-{s}", "path": f"{CHECKPOINTS}/pythia-{s}/step143000", "pretrain_tokens": 143000 * TOKENS_PER_STEP}
    for s in SIZES
  ]
  steps = [
    {
      "name": f"pythia-410m-step{t}",
      "path": f"{CHECKPOINTS}/pythia-410m/step{t}",
      "pretrain_tokens": t * TOKENS_PER_STEP,
    }
    for t in STEPS
    if t != 143000
  ]
  c.model = {"sizes": (), "checkpoints": tuple(final + steps), "block": {"compute_dtype": "bfloat16", "remat": "dots"}}
  # The tokenizer is the first checkpoint's (every Pythia shares it); pretraining text is not read
  # except to measure forgetting: give a TFDS text corpus here to measure it on the Pile's kind of text.
  c.data = {"corpus": "world"}
  c.finetune = {
    "tasks": (
      {
        "name": "wmt19_zh_en",
        "tfds": "wmt19_translate/zh-en",
        "data_dir": DATA_DIR,
        "prompt": "Translate Chinese to English.\nChinese: {translation.zh}\nEnglish:",
        "answer": " {translation.en}",
        "train": "train",
        "dev": "validation[:50%]",
        "test": "validation[50%:]",
      },
    ),
    "methods": ("full", {"name": "lora", "rank": 16}),
    "d_f": (1000, 4000, 16000, 64000, 256000),
    "seeds": (0,),
    "train": {
      "batch_size": 64,
      "seq_len": 256,
      "learning_rate": 3e-5,
      "warmup_steps": 100,
      "max_steps": 20000,
      "eval_every": 200,
      "patience": 3,
      "checkpoint_every": 1000,
    },
  }
  c.eval = {"batch_size": 64}
  c.mesh = {"shape": {"data": 1, "fsdp": -1, "tensor": 1}}
  return study.resolve(c)
