"""The popularity world asked trivia: questions about its people, drawn alike for fine-tuning and
test, so that fine-tuning data stands in for what a small base does not know.

The world is `configs/popularity.py`'s (1,000 people, the person of popularity rank r written about
max(1, round(1500 r^-1.3)) times). The `trivia` task draws its 1,000 training and 500 test
questions alike, with replacement, about people as often as they are written about: a test
question may be one the fine-tune saw (as in real question-answering sets), so a fact is known if
the base stored it or the fine-tune was shown it. Measured on the 2-core CPU development machine on
2026-12-04 with

    python -m launch.local --config configs/trivia.py --workdir runs/trivia

(160 runs in 126 s: four bases, 60 fine-tunes over three seeds, 96 EFT runs). Test loss, the mean
of three seeds:

| base | D_f 40 | 80 | 160 | 320 | 640 | log gain, 40 to 640 |
|---|---|---|---|---|---|---|
| d16l2 | 1.125 | 1.010 | 0.946 | 0.879 | 0.853 | 0.277 |
| d32l2 | 0.846 | 0.750 | 0.718 | 0.660 | 0.633 | 0.289 |
| d48l2 | 0.756 | 0.661 | 0.608 | 0.594 | 0.569 | 0.285 |
| d64l2 | 0.700 | 0.587 | 0.525 | 0.500 | 0.485 | 0.367 |

- Every curve falls with N and with D_f, and the three smaller bases gain the same share of their
  loss from D_f (log gains 0.28, 0.29, 0.28), as the multiplicative law has it: the first world
  where they do. In the popularity world's `qa` task the gains grew with N; here what a fine-tune
  is shown can replace what a base did not store. The four-head d64l2 gains more (0.37).
- Fitted without d64l2, the multiplicative law predicts its test losses 7.8% off on average (worst
  9.6%), with E not determined (0.19, off the starting grid); the additive law 5.0% (worst 7.1%),
  Kaplan's 2.9% (worst 4.4%). With 2,000 test questions (`--config.world.question_draws=2000`,
  new bases, EFT off, same machine and date): multiplicative 6.3% (worst 10.4%), additive 1.4%
  (worst 4.0%).
- EFT (seed-0 pairs): knowledge follows N1 at every beta (b1 0.187 [0.141, 0.225] at beta 1).
  Behaviour follows N2 at beta 0.5 (b2 0.189 [0.094, 0.286]) but N1 at beta 1 (b1 0.238 [0.151,
  0.307]), as the `qa` task's does in this world (b1 0.197 [0.070, 0.306]).

Other settings, measured the same way (same machine and date, EFT off), move the held-out error of
the multiplicative law between 6% and 14% on average without determining E:
- five seeds (`--config.finetune.seeds='(0,1,2,3,4)'`): 8.3% (worst 11.6%); additive 3.8% (6.1%).
- early stopping evaluated every 5 steps (`--config.finetune.train.eval_every=5
  --config.finetune.train.patience=5`; the default's first evaluation, at step 20, is 16 epochs of
  D_f 40, and most fine-tunes keep it): d64l2 at D_f 40 falls from 0.700 to 0.617 and the gains
  shrink with N (0.278, 0.210, 0.170, 0.135), but the law is 8.3% off (worst 11.5%).
- a fifth base, d96l3, held out instead (`--config.model.sizes='("d16l2","d32l2","d48l2","d64l2","d96l3")'`):
  at D_f 40 it is worse than d64l2 (0.734), at 640 better (0.441), and the law is 13.9% off (worst
  30.8%).

What the issue asks of the default study is closer but not met: the multiplicative law within 5%
mean and 10% worst with E determined, and behaviour following N2.
"""

import ml_collections

from configs import popularity


def get_config() -> ml_collections.ConfigDict:
  c = popularity.get_config()
  c.name = "trivia"
  c.finetune.tasks = ("trivia",)
  c.finetune.seeds = (0, 1, 2)
  c.eft.enabled = True
  return c
