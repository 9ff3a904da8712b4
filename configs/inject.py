"""The qa study on new knowledge: fine-tunes that teach facts about people in no pretraining text.

The world's 200 people and corpus are the qa study's; 300 new people (new names, in no
pretraining text) are asked about by the `inject` task, the new person of rank r in proportion to
1/r. Its training and test questions are drawn alike, with replacement, so a test question is one
a fine-tune has seen or one it cannot answer but by a guess: of the 500 test questions, D_f 40
training ones leave about 85% unseen and D_f 640 about 37%. Measured on the 2-core CPU development
machine on 2026-12-04 with

    python -m launch.local --config configs/inject.py --workdir runs/inject

(120 runs in 112 s and 4 zero-shot runs, timed apart; one seed; the per-base figures below are of
the fine-tunes at D_f 40 / 640):

| base | test loss | knowledge of new people | cloze knowledge of held-out people (base: after) |
|---|---|---|---|
| d16l2 | 1.90 / 1.69 | 0.08 / 0.13 | 0.06: 0.04 / 0.06 |
| d32l2 | 1.89 / 1.67 | 0.04 / 0.15 | 0.09: 0.06 / 0.08 |
| d48l2 | 2.11 / 1.40 | 0.07 / 0.45 | 0.32: 0.18 / 0.02 |
| d64l2 | 2.78 / 1.53 | 0.05 / 0.34 | 0.97: 0.88 / 0.27 |

- Knowledge follows the scale that acquired it. EFT's knowledge of the new people follows N2, the
  fine-tune's size (b2 0.027 [0.007, 0.049] at beta 1, b1 0.004 [-0.017, 0.029]), where the qa
  study's knowledge of held-out people follows N1, the base's.
- New facts cost old ones: d64l2's cloze knowledge of held-out people falls from 0.97 to 0.27 as
  D_f grows to 640, where the qa study's fine-tunes keep 0.69 to 0.80 at every D_f.
- The multiplicative law does not fit this world either: larger bases learn more from each new
  example (and at D_f 40 guess worse, with more confidence), so the gain from D_f 40 to 640 grows
  with N (0.21, 0.22, 0.71, 1.25), where the law has it shrink. Fitted without d64l2 it predicts
  d64l2's test losses 12% off on average (worst 26%). Fine-tuning that stores facts and
  fine-tuning that draws them out of the base (`configs/popularity.py`) both give larger bases the
  larger gains.
"""

import ml_collections

from configs import qa


def get_config() -> ml_collections.ConfigDict:
  c = qa.get_config()
  c.name = "inject"
  c.world.update({"new_people": 300, "new_zipf": 1.0})
  c.finetune.tasks = ("inject",)
  return c
