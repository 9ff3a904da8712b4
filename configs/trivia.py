"""The popularity world asked trivia: questions about its people, drawn alike for fine-tuning and
test, so that fine-tuning data stands in for what a small base does not know. The multiplicative
law fits it.

The world is `configs/popularity.py`'s (1,000 people, the person of popularity rank r written about
max(1, round(1500 r^-1.3)) times). The `trivia` task draws its 1,000 training and 500 test
questions alike, with replacement, about people as often as they are written about: a test
question may be one the fine-tune saw (as in real question-answering sets), so a fact is known if
the base stored it or the fine-tune was shown it. A tenth of the answers, in every split, are
another value (`world.answer_noise`, as annotation errors): their entropy is a floor under the
test loss, 0.34 nats a scored token. Fine-tunes are evaluated every 5 steps. Measured on the 2-core
CPU development machine on 2026-12-04 with

    python -m launch.local --config configs/trivia.py --workdir runs/trivia

(160 runs in 144 s: four bases, 60 fine-tunes over three seeds, 96 EFT runs). Test loss, the mean
of three seeds:

| base | D_f 40 | 80 | 160 | 320 | 640 | log gain, 40 to 640 |
|---|---|---|---|---|---|---|
| d16l2 | 1.264 | 1.180 | 1.112 | 1.043 | 0.992 | 0.242 |
| d32l2 | 1.039 | 0.940 | 0.897 | 0.851 | 0.826 | 0.230 |
| d48l2 | 0.955 | 0.860 | 0.832 | 0.791 | 0.766 | 0.220 |
| d64l2 | 0.920 | 0.815 | 0.773 | 0.748 | 0.737 | 0.222 |

- Every curve falls with N and with D_f, and the gains from D_f shrink as N grows (0.272, 0.213,
  0.189, 0.183), as the multiplicative law has them: every base gains about the same share.
- Fitted without d64l2, the multiplicative law predicts its test losses within 2.5% on average
  (worst 9.0%, at D_f 40), with every parameter determined: E = 0.49 [0.32, 0.63], alpha = 0.28,
  beta = 0.16. The overtrained law 2.3% (worst 4.5%), the additive 3.0% (worst 5.7%). With five
  seeds (`--config.finetune.seeds='(0,1,2,3,4)'`, EFT off): 2.4% (worst 7.2%), E = 0.54. With
  2,000 test questions (`--config.world.question_draws=2000`, new bases, EFT off): 3.2% (worst
  9.7%), E = 0.64; the overtrained law 1.5% (worst 2.1%).
- EFT (seed-0 pairs): knowledge follows N1 at every beta (b1 0.177 [0.135, 0.214] at beta 1).
  Behaviour follows N2 at beta 0.5 (b2 0.179 [0.093, 0.264], b1 0.083 [-0.026, 0.170]) but N1 at
  beta 1 (b1 0.229 [0.127, 0.313]): with another size's fine-tuning delta, d16l2's base answers in
  the format 1% to 16% of the time, where the other pairs do 53% to 100%.

What the settings do (same machine and date, three seeds, EFT off):
- Without the noise and with evaluations every 20 steps (the smoke study's; its first evaluation
  is 16 epochs of D_f 40, and most fine-tunes keep it): the smaller bases' log gains are equal
  (0.277, 0.289, 0.285) but d64l2's larger (0.367); the law is 7.8% off (worst 9.6%) with E not
  determined, the additive law 5.0% (7.1%). Five seeds: 8.3% (11.6%). A fifth base, d96l3, held
  out: 13.9% (30.8%).
- Without the noise, evaluated every 5 steps: d64l2 at D_f 40 falls from 0.700 to 0.617, and the
  law is 8.3% off (worst 11.5%), E not determined: with answers that are certain, E is about 0.
- Noise without the finer evaluation hurts the larger bases, which memorise the wrong answers of
  repeated questions: at 10%, d64l2 at D_f 40 is worse than d48l2, and the law is 5.1% off (worst
  12.4%).
"""

import ml_collections

from configs import popularity


def get_config() -> ml_collections.ConfigDict:
  c = popularity.get_config()
  c.name = "trivia"
  c.finetune.tasks = ("trivia",)
  c.world.answer_noise = 0.1
  c.finetune.seeds = (0, 1, 2)
  # Evaluated every 5 steps: the first evaluation at step 20 would be 16 epochs of D_f 40.
  c.finetune.train.update({"eval_every": 5, "patience": 5})
  c.eft.enabled = True
  return c
