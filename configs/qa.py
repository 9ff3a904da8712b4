"""The qa study: 200 people all alike, asked `qa` questions about held-out people, whose facts only
pretraining gives. `configs/format_or_facts.py`, `methods.py`, `inject.py` and `popularity.py`
build on it.

It is the smoke study (`configs/smoke.py`: four bases, full fine-tunes on nested subsets, EFT over
every pair) in this world and task, with one seed and evaluations every 20 steps. Measured on the
2-core CPU development machine on 2026-12-04 with

    python -m launch.local --config configs/qa.py --workdir runs/qa

(120 runs in 169 s: 4 bases, 20 fine-tunes, 96 EFT runs; and 4 zero-shot runs, timed apart).
Test loss, and knowledge (exact match about held-out people) and behaviour (answers in the format)
at D_f 640:

| base | D_f 40 | 80 | 160 | 320 | 640 | knowledge | behaviour at 40 / 640 |
|---|---|---|---|---|---|---|---|
| d16l2 | 1.94 | 1.92 | 1.86 | 1.82 | 1.80 | 0.03 | 1.00 / 1.00 |
| d32l2 | 1.89 | 1.86 | 1.83 | 1.81 | 1.84 | 0.04 | 1.00 / 0.99 |
| d48l2 | 1.86 | 1.84 | 1.73 | 1.68 | 1.65 | 0.10 | 0.94 / 0.99 |
| d64l2 | 0.96 | 0.73 | 0.67 | 0.56 | 0.57 | 0.64 | 0.90 / 1.00 |

- Knowledge is a step, not a power law: the three small bases know almost no facts (cloze
  knowledge 0.07 to 0.25), so their test loss is that of a well-formed guess; d64l2 knows most
  (cloze 0.99). Fitted to the three small bases, the multiplicative law predicts d64l2's losses
  1.07 nats too high, and so does the additive law. Per base, the single and rectified laws over
  D_f fit each curve within 0.013.
- Zero-shot, asked the test questions untuned (2026-12-05), the bases answer 0.028, 0.036, 0.132
  and 0.620 right, about what their fine-tunes reach: in this world fine-tuning adds the format
  (behaviour 0 before it), not facts about held-out people.
- EFT over the 32 runs at beta 1 (90% bootstrap intervals): knowledge follows N1 (b1 0.158
  [0.116, 0.203], b2 -0.003 [-0.044, 0.040]) and behaviour N2 (b2 0.030 [0.009, 0.059], b1 -0.000
  [-0.035, 0.036]); at beta 0.5, b2 = 0.157 [0.128, 0.190] for behaviour. Up-scaling closes a
  median 0.91 of the knowledge gap at D_f 640 (proxy-tuning reported 0.88 to 0.91).
- The bases must be promptable. With `world.question_renderings = 0` (no question-shaped text in
  pretraining; measured with the sizes `d32l2` to `d96l3`) the bases alone put 15 to 18 nats on
  the answer tokens, EFT up-scaling transfers no knowledge (d96l3's base with d32l2's fine-tune
  answers 4% of held-out facts, the small fine-tune's figure), and the knowledge coefficients are
  b1 = 0.041 [-0.009, 0.095] and b2 = 0.051 [-0.003, 0.105].
"""

import ml_collections

from configs import smoke


def get_config() -> ml_collections.ConfigDict:
  c = smoke.get_config()
  c.name = "qa"
  # 200 people, each written about 8 times; the corpus asks about training people in a "Q : ... A :"
  # format four times each: the bases can be prompted.
  c.world.update({"num_people": 200, "bio_renderings": 8, "zipf": 0.0, "question_renderings": 4, "answer_noise": 0.0})
  c.finetune.tasks = ("qa",)
  c.finetune.seeds = (0,)
  c.finetune.train.update({"eval_every": 20, "patience": 3})
  c.eft.pairs = ()  # Every ordered pair: this corpus's d16l2 base can be asked.
  return c
