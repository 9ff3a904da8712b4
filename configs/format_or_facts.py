"""Format or facts? The qa study's bases fine-tuned on right answers (`qa`) and on wrong ones
(`qa_wrong`: every answer replaced by another value of its attribute, seeded), both tested on the
right answers of held-out people, whose facts only pretraining gives.

If instruction tuning teaches the output format rather than the task, the wrong-answer fine-tunes
keep the behaviour (answers of the right kind) and the knowledge of held-out people that the
right-answer fine-tunes show. The report's section "Tasks side by side" puts the two in one table
(knowledge, behaviour and test loss by base and D_f), and each task has its own fits.
The bases are the qa study's (same ids): run it in a copy of a qa workdir and only the
fine-tunes train.

    python -m launch.local --config configs/format_or_facts.py --workdir runs/format_or_facts

Here it is not format alone. On the 2-core CPU development machine on 2026-12-04 (the 20 wrong-answer
fine-tunes in 49 s beside the qa study's runs), the wrong-answer fine-tunes keep the behaviour
(0.96 to 1.00 at D_f 80 to 640, as the right-answer ones), but d64l2, the one base that knows the
held-out people, loses that knowledge: exact match 0.16, 0.17, 0.20, 0.12, 0.06 at D_f 40 to 640,
against 0.46, 0.54, 0.60, 0.68, 0.64 after right answers, and falling the more wrong answers it sees
(test loss 1.87 to 1.91 against 0.94 to 0.58). The three small bases know almost none (0.03 to
0.11 either way). Fine-tuning on wrong answers teaches the model to answer past what it knows.
"""

import ml_collections

from configs import qa


def get_config() -> ml_collections.ConfigDict:
  c = qa.get_config()
  c.name = "format_or_facts"
  c.finetune.tasks = ("qa", "qa_wrong")
  c.eft.enabled = False
  return c
