"""The smoke study: a complete fine-tuning scaling study that runs on a laptop CPU in minutes, in a
world where the multiplicative law holds.

1,000 people, the one of popularity rank r written about max(1, round(1500 r^-1.3)) times. Four
bases are pretrained on their biographies; each is fully fine-tuned on nested subsets of the
`trivia` task, whose 1,000 training and 500 test questions are drawn alike, with replacement, about
people as often as they are written about: a test question may be one the fine-tune saw (as in
real question-answering sets), so a fact is known if the base stored it or the fine-tune was shown
it. A tenth of the answers, in every split, are another value (`world.answer_noise`, as annotation
errors): their entropy is a floor under the test loss, 0.34 nats a scored token. Fine-tunes are
evaluated every 5 steps. Each base is asked the test questions untuned (zero-shot). EFT recombines
every base N1 that can be asked in the task's format with every seed-0 fine-tune N2. Measured on the
2-core CPU development machine on 2026-12-04 (the zero-shot and EFT runs, and the time, on
2026-12-05) with

    python -m launch.local --config configs/smoke.py --workdir runs/smoke

(180 runs in 159 s: four bases, 100 fine-tunes over five seeds, 4 zero-shot runs, 72 EFT runs).
Test loss, the mean of five seeds:

| base | D_f 40 | 80 | 160 | 320 | 640 | log gain, 40 to 640 |
|---|---|---|---|---|---|---|
| d16l2 | 1.258 | 1.186 | 1.106 | 1.046 | 1.000 | 0.229 |
| d32l2 | 1.021 | 0.934 | 0.891 | 0.856 | 0.834 | 0.202 |
| d48l2 | 0.940 | 0.859 | 0.823 | 0.792 | 0.765 | 0.207 |
| d64l2 | 0.899 | 0.821 | 0.764 | 0.741 | 0.727 | 0.212 |

- Every curve falls with N and with D_f, and the gains from D_f shrink as N grows (0.258, 0.187,
  0.176, 0.172), as the multiplicative law has them: every base gains about the same share.
- Fitted without d64l2, the multiplicative law predicts its test losses within 2.4% on average
  (worst 7.2%, at D_f 40), with every parameter determined: E = 0.535 [0.32, 0.60], alpha = 0.33
  [0.20, 0.41], beta = 0.17 [0.12, 0.24]. Ranked by held-out error (largest N and largest D_f
  held out in turn): additive 1.9% (worst 5.8%), multiplicative 2.1% (7.2%), overtrained 2.3%
  (7.1%), Kaplan's 3.6% with D_C and alpha_d not determined.
- Zero-shot, d16l2's base answers none of the test questions right, though it stores facts (cloze
  knowledge 0.21): it cannot be asked in the task's format (value mass 0.056: that much of its
  next-token probability after the test prompts is on the asked attribute's values, the larger
  bases' 0.87 to 0.97). d32l2's to d64l2's bases answer 0.476, 0.610 and 0.706.
- EFT over N1 in d32l2 to d64l2 and N2 in all four sizes (12 pairs): at beta 1, knowledge follows
  N1 (b1 0.100 [0.056, 0.148], b2 0.004 [-0.027, 0.031]) and behaviour N2 (b2 0.053 [0.006,
  0.091], b1 0.006 [-0.072, 0.079]); knowledge follows N1 at every beta, behaviour both scales at
  beta 0.5 (b1 -0.207, b2 0.272) and N2, falling, at 1.5. With d16l2 as N1 too
  (`--config.eft.pairs='()'`), behaviour follows N1 at beta 1 (b1 0.229 [0.127, 0.313]): with
  another size's delta that base answers in the format 1% to 16% of the time. Over the bases of
  pretraining seed 3 the beta-1 verdicts are the same; over seed 1's and seed 2's, behaviour
  follows neither, every delta giving the format 84% to 100% of the time (docs/science.md).

The held-out error depends on the bases' pretraining seed: each size is one draw, and the D_f 40
fine-tunes move with it most. With pretraining seed 1 or 2 in place of 0
(`--config.pretrain.seeds='(1,)'`, five fine-tuning seeds), the law fitted without d64l2 is 5.0%
off (worst 14.9%) and 7.6% off (worst 11.3%), E determined in both; 2,400 pretraining steps do not
help (seed 2: 7.7%, worst 9.8%). Averaged over pretraining seeds 0 to 2,

    python -m launch.local --config configs/smoke.py --workdir runs/smoke3 \
        --config.pretrain.seeds='(0,1,2)' --config.finetune.seeds='(0,1)'

(228 runs and 12 zero-shot ones; 6 min 21 s from a fresh clone, timed without the zero-shot runs,
against `make study`'s 3 min 24 s that day), it is 1.7% off
(worst 3.9%), E = 0.61 [0.42, 0.69], alpha = 0.39 [0.24, 0.57], beta = 0.28 [0.17, 0.37], and the
multiplicative law ranks first of the zoo: 1.8% (worst 3.9%) over both holdouts, against Kaplan's
3.8% (not determined), the overtrained law's 5.2% (worst 16.6%) and the additive law's 6.9% (not
determined). EFT uses the first seed's bases, so its figures are those above. With one fine-tuning
seed (`--config.finetune.seeds='(0,)'`, 2026-12-05) it is 2.6% off (worst 3.9%), E = 0.64, the
multiplicative law first again; but over seeds 3 to 5 it is 5.6% off (worst 10.4%) with E not
determined. The zero-shot runs say why: d32l2 of seed 3 and d48l2 of seed 5 store facts as their
siblings do (cloze 0.50 and 0.64) but cannot be asked for them (zero-shot knowledge 0.062 and 0.032,
against 0.274, 0.200 and 0.648, 0.528), and their D_f 40 fine-tunes lag (1.477 and 1.314, against
1.000, 1.136 and 0.871, 0.924); a learning rate of 3e-4 or a batch of 8 leaves them as far behind,
and question documents in the task's own format do not help (seeds 3 to 5: 5.3% off, worst 10.8%;
seeds 0 to 2: 16.1%, worst 25.9%; docs/science.md).

What the settings do (same machine and date, three fine-tuning seeds, EFT off; `configs/popularity.py` is this
world asked `qa`, where the law does not fit):
- Three fine-tuning seeds: 2.5% (worst 9.0%), E = 0.49. 2,000 test questions
  (`--config.world.question_draws=2000`): 3.2% (worst 9.7%), E = 0.64.
- Without the noise and with evaluations every 20 steps (the qa study's; its first evaluation is
  16 epochs of D_f 40, and most fine-tunes keep it): the smaller bases' log gains are equal
  (0.277, 0.289, 0.285) but d64l2's larger (0.367); the law is 7.8% off (worst 9.6%) with E not
  determined, the additive law 5.0% (7.1%). Five seeds: 8.3% (11.6%). A fifth base, d96l3, held
  out: 13.9% (30.8%).
- Without the noise, evaluated every 5 steps: d64l2 at D_f 40 falls from 0.700 to 0.617, and the
  law is 8.3% off (worst 11.5%), E not determined: with answers that are certain, E is about 0.
- Noise without the finer evaluation hurts the larger bases, which memorise the wrong answers of
  repeated questions: at 10%, d64l2 at D_f 40 is worse than d48l2, and the law is 5.1% off (worst
  12.4%).
- A fifth base, d96l3 (five seeds): its losses barely fall below d64l2's (0.899 at D_f 40, as
  d64l2's; 0.703 at 640), and the law fitted without it is 10.3% off (worst 17.9%): this world's
  1,000 people are too few for a base that size to gain much.
- Four question documents per training person (`--config.world.question_renderings=4`, five
  seeds): the gains are irregular (0.136, 0.208, 0.097, 0.086), E is at 0, and behaviour still
  follows N1 at beta 1.

Override any field from the command line, for example
`python -m launch.local --config configs/smoke.py --config.finetune.seeds='(0,1,2)'`. The EFT pairs
name this ladder's sizes: with other sizes, `--config.eft.pairs='()'` gives every ordered pair.
"""

import ml_collections

from scaling import study


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = "smoke"
  # 1,000 people, the one of popularity rank r written about max(1, round(1500 r^-1.3)) times. The
  # corpus asks about training people in a "Q : ... A :" format: the bases can be prompted. A tenth
  # of the trivia answers are wrong, as annotation errors are: a floor under the test loss.
  c.world = {
    "seed": 0,
    "num_people": 1000,
    "bio_renderings": 1500,
    "zipf": 1.3,
    "heldout_renderings": 2,
    "question_renderings": 1,
    "answer_noise": 0.1,
  }
  c.model = {"sizes": ("d16l2", "d32l2", "d48l2", "d64l2"), "block": {"norm": "rms", "mlp": "swiglu"}}
  c.pretrain = {
    "seeds": (0,),
    "steps": (1200,),
    "train": {"batch_size": 32, "seq_len": 48, "learning_rate": 3e-3, "warmup_steps": 50, "checkpoint_every": 600},
  }
  c.finetune = {
    "tasks": ("trivia",),
    "methods": ("full",),
    "d_f": (40, 80, 160, 320, 640),
    "seeds": (0, 1, 2, 3, 4),
    "train": {
      "batch_size": 32,
      "seq_len": 16,
      "learning_rate": 1e-3,
      "warmup_steps": 10,
      "max_steps": 600,
      # Every 5 steps: a first evaluation at step 20 would come after 16 epochs of D_f 40.
      "eval_every": 5,
      "patience": 5,
      "checkpoint_every": 200,
    },
  }
  # Each base asked the test questions before fine-tuning: what it can be asked in the task's format.
  c.zeroshot = {"enabled": True}
  # N1: the bases that can be asked in the task's format, as EFT's up-scaling assumes (zero-shot,
  # d16l2's base answers none of the test questions right, the others 0.48 to 0.71); N2: every size.
  # D_f: the smallest and the largest fine-tune's.
  sizes = c.model.sizes
  c.eft = {"enabled": True, "betas": (0.5, 1.0, 1.5), "pairs": tuple((n1, n2) for n1 in sizes[1:] for n2 in sizes)}
  c.mesh = {"shape": {"data": -1, "fsdp": 1, "tensor": 1}}
  # Tuples, not lists: ml_collections overrides tuples from the command line. Resolved, so that
  # every study field (not only those set here) can be overridden.
  return study.resolve(c)
