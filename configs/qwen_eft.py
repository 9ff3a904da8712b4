"""Emulated fine-tuning over a real family: Qwen2.5 bases and their Instruct checkpoints (as Mitchell
et al. 2023 recombined Llama-2 base and chat), scored on TriviaQA by the answers they generate.

Every ordered pair (N1, N2) of the three sizes is an EFT run `log p_base(N1) + beta * (log
p_instruct(N2) - log p_base(N2))`: does knowledge (exact match, token F1) follow N1 while behaviour
(a short one-line answer, the format check) follows N2? Nothing is trained; the bases and Instruct
checkpoints are measured as they are, and the diagonal at beta = 1 is each Instruct model itself.

Runnable once you have, on your own disk or bucket:
- The six folders (config.json, safetensors weights, tokenizer.json), for example
  `huggingface-cli download Qwen/Qwen2.5-0.5B --local-dir $CHECKPOINTS/Qwen2.5-0.5B` and the same for
  Qwen2.5-0.5B-Instruct, Qwen2.5-1.5B(-Instruct) and Qwen2.5-7B(-Instruct). Set CHECKPOINTS below.
  All six share one tokenizer (validation compares them); 7B pads it to 152,064 rows where the two
  smaller pad it to 151,936, and a mixture reads the shared rows.
- TriviaQA prepared by TFDS in array_record format, in DATA_DIR:
  `tfds build trivia_qa/rc.nocontext --file_format=array_record --data_dir=DATA_DIR`
  (this one step needs TensorFlow and the internet; the study reads it without either).
Then `python -m launch.check --config configs/qwen_eft.py --topology v5p-8` (every EFT mixture's memory:
all three of its models), and `python -m launch.local --config configs/qwen_eft.py --workdir
gs://BUCKET/studies/qwen_eft`, or a TPU/GKE launcher (python -m launch.tpu ..., python -m launch.gke ...).
"""

import ml_collections

from scaling import study

CHECKPOINTS = "gs://YOUR_BUCKET/qwen"  # Holds Qwen2.5-<size> and Qwen2.5-<size>-Instruct folders.
DATA_DIR = "gs://YOUR_BUCKET/tensorflow_datasets"
SIZES = ("0.5B", "1.5B", "7B")
# Qwen2.5's report: 18T pretraining tokens, and "over 1 million" supervised examples for Instruct,
# which is the D_f recorded for the imported fine-tunes.
PRETRAIN_TOKENS, INSTRUCT_EXAMPLES = 18e12, 1_000_000


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = "qwen_eft"
  c.model = {
    "sizes": (),
    "block": {"compute_dtype": "bfloat16"},
    "checkpoints": tuple(
      {
        "name": f"qwen2.5-{s}",
        "path": f"{CHECKPOINTS}/Qwen2.5-{s}",
        "pretrain_tokens": PRETRAIN_TOKENS,
        "finetunes": ({"path": f"{CHECKPOINTS}/Qwen2.5-{s}-Instruct", "method": "instruct", "d_f": INSTRUCT_EXAMPLES},),
      }
      for s in SIZES
    ),
  }
  # The tokenizer is the first checkpoint's. Held-out loss (forgetting) is measured on the world's text
  # unless a TFDS corpus is given here.
  c.data = {"corpus": "world"}
  c.finetune = {
    "tasks": (
      {
        "name": "triviaqa",
        "tfds": "trivia_qa/rc.nocontext",
        "data_dir": DATA_DIR,
        "prompt": "Answer the question in a few words.\nQuestion: {question}\nAnswer:",
        "answer": " {answer.value}",
        "train": "train",
        "dev": "validation[:5%]",
        "test": "validation[50%:55%]",
        "metrics": ("exact_match", "f1"),
        "format": r"[^\n]{1,80}",
        "max_answer_tokens": 24,
      },
    ),
    "methods": (),
  }  # Nothing fine-tuned here: the Instruct checkpoints are the fine-tunes.
  c.eft = {"enabled": True, "betas": (0.5, 1.0, 1.5)}  # Every ordered pair of the three sizes.
  c.eval = {"batch_size": 32}
  c.mesh = {"shape": {"data": 1, "fsdp": -1, "tensor": 1}}
  return study.resolve(c)
