"""The qa study in a world with popular and obscure people (world.zipf): the smoke study's world,
asked the qa study's questions. Its bases are the smoke study's (same ids: answer noise is read
only by the tasks), so in a copy of a smoke workdir only its fine-tunes train.

1,000 people; the person of popularity rank r has max(1, round(1500 * r^-1.3)) biographies, and
questions are asked about people as often as they are written about. In the qa world (200
people, all alike) the three small bases know almost none of the held-out facts and d64l2 knows
most: a step. Here the bases' knowledge rises gradually (cloze knowledge of held-out people
0.21, 0.47, 0.64, 0.68 for d16l2 to d64l2), but fine-tuning draws it out unevenly: the fine-tuned
knowledge of d16l2 and d32l2 stays far below their bases' (0.05 to 0.35), and the four-head d64l2
extracts most. Fitted without d64l2, the multiplicative law predicts its test losses 15% too high
on average (worst 23%; the additive law 14% and 21%), with E at its bound of 0, where the qa
world's fit is 92% to 210% too high; a fine-tuning learning rate of 3e-4 (instead of 1e-3) did not
help (30%, 34%). Measured on the 2-core CPU development machine on 2026-12-04 with

    python -m launch.local --config configs/popularity.py --workdir runs/popularity

(169 s of runs, EFT off there; the same override set on configs/qa.py).

Single fine-tunes are noisy here: a fifth of the test questions ask about one popular person, so a
base that misses that person's facts moves its test loss by tenths. With three fine-tuning seeds
(`--config.finetune.seeds='(0,1,2)'`, 244 s of runs on the same machine and date) every curve falls
with N and with D_f (test loss at D_f 640: 1.67, 1.45, 1.17, 1.04), and fitted without d64l2 the
additive law predicts it within 5.9% on average (worst 10.9%), the multiplicative law within 12%
(worst 21%); E is at 0 in both. Two other changes did not help (single seed): one head per 16
dimensions in every base (d16l2 with 1 head, d48l2 with 3: 17%, 25%), and LoRA fine-tunes at a
learning rate of 3e-3 instead of full ones (16%, 27%). Neither kind of fine-tune spares the base:
the held-out biography loss rises from 0.93 to 1.41 (the bases) to 2 to 6 after either.

Why the multiplicative law cannot fit this world, whatever E is: it makes a base's gain from D_f,
L(N, D_0) - L(N, D_1) = A N^-alpha (D_0^-beta - D_1^-beta), shrink as N grows. Here fine-tuning
draws out facts the base stored, and a larger base has more to draw out, so the gain from D_f 40
to 640 grows with N: 0.25, 0.33, 0.38, 0.43 with three seeds, and 0.12, 0.21, 0.25, 0.36 with
three seeds and four question documents per training person in pretraining
(`--config.world.question_renderings=4`: bases that know the question format better; 184 s of
runs; multiplicative law 14% / 24% held out, additive 6.4% / 11.8%, E at 0; same machine,
2026-12-04). Without question documents (`question_renderings=0`: bases that learn the format only
in fine-tuning, behaviour 0.48 to 0.80 at D_f 40) the gains are irregular, 0.69, 0.54, 0.91, 0.63
with three seeds; the multiplicative law is 9.9% / 15.3% off held out, the additive 4.7% / 10.1%,
and EFT's behaviour coefficient on N2 turns negative (-0.082 [-0.151, -0.010]; 193 s of launches, same
machine and date). The report prints this check below its law ranking. A study that meets the
multiplicative law needs fine-tuning data that stands in for base size (larger bases needing
less of it), not only fine-tuning that unlocks what the base knows: `configs/smoke.py`, the smoke
study, asks this world such questions.
"""

import ml_collections

from configs import qa


def get_config() -> ml_collections.ConfigDict:
  c = qa.get_config()
  c.name = "popularity"
  c.world.update({"num_people": 1000, "bio_renderings": 1500, "zipf": 1.3, "question_renderings": 1})
  c.eft.enabled = False
  return c
