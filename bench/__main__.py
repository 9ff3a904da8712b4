"""Benchmarks that compare against a baseline run in the same process and print a table.

    python -m bench train [--size d768l12,d2048l24] [--seq 2048] [--batch 8] [--dtype bfloat16]
                          [--remat none|dots|full] [--attention auto|xla|cudnn] [--vocab 32768]
                          [--loss-chunk 256]
    python -m bench methods [--size d128l4] [--methods full,lora,prompt,reft,svf] [--seq 256] [--batch 8]
    python -m bench laws [--points 40] [--bootstrap 1000]
    python -m bench eft [--workdir runs/smoke] [--n1 SIZE] [--n2 SIZE] [--k 4] [--tokens 48]
    python -m bench grid [--workdir runs/smoke] [--lanes 8] [--sizes d32l2,d64l2]

`python -m bench SUB-COMMAND --help` lists a benchmark's flags; its module (bench/train.py,
bench/methods.py, bench/laws.py, bench/eft.py, bench/grid.py) says what it measures.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

import jax

from scaling import model as model_lib

# Each sub-command imports its benchmark's module when it runs: `train` runs on GPU machines
# without the study's data stack (TFDS, grain, ml_collections), which `eft` and `grid` import.


def _check_batch(args: argparse.Namespace, error: Callable[[str], None]) -> None:
  """Rejects a batch that does not split over the devices."""
  if args.batch % jax.device_count():
    error(
      f"--batch={args.batch} does not split over the {jax.device_count()} devices; allowed: a multiple "
      f"of {jax.device_count()}"
    )


def _print_pairs(title: str, rows: list[tuple[str, str]]) -> None:
  """A benchmark's table of (what, value) rows, under its title."""
  width = max(len(k) for k, _ in rows)
  print(title)
  for k, v in rows:
    print(f"  {k.ljust(width)}  {v}")


def _train(args: argparse.Namespace, error: Callable[[str], None]) -> None:
  """Our training step against the reference, per size: the table, and the rows in --json's file."""
  from bench import train

  if args.loss_chunk < 0:
    error(f"--loss-chunk={args.loss_chunk}; allowed: 0 (no chunks) or a positive integer")
  _check_batch(args, error)
  try:
    cfgs = train.configs(
      args.size.split(","),
      args.vocab,
      compute_dtype=args.dtype,
      remat=args.remat,
      attention=args.attention,
      layer_loop=args.layer_loop,
    )
  except ValueError as e:
    error(str(e))
  rows = [
    row
    for size, cfg in cfgs.items()
    for row in train.measure(
      size,
      cfg,
      seq=args.seq,
      batch=args.batch,
      steps=args.steps,
      warmup=args.warmup,
      loss_chunk=args.loss_chunk,
      hlo_dir=args.hlo,
    )
  ]
  print("\n".join(train.table(rows)))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=1)


def _methods(args: argparse.Namespace, error: Callable[[str], None]) -> None:
  """Each method's train step against full tuning's: the table."""
  from bench import methods

  _check_batch(args, error)
  entries = args.methods.split(",")
  try:
    cfg = methods.base_config(args.size, args.vocab, args.dtype, entries, args.seq)
  except ValueError as e:
    error(str(e))
  rows = methods.measure(cfg, entries, seq=args.seq, batch=args.batch, steps=args.steps, warmup=args.warmup)
  title = (
    f"methods: train steps on {args.size} (vocab {args.vocab}, {args.batch} x {args.seq} tokens, "
    f"{model_lib.compute_dtype_of(cfg)}) "
    f"on {jax.device_count()} x {jax.devices()[0].device_kind}; median of {args.steps} steps"
  )
  print("\n".join(methods.table(title, rows)))


def _laws(args: argparse.Namespace, error: Callable[[str], None]) -> None:
  """The vectorised law fit against the scipy loop: the table."""
  from bench import laws

  _print_pairs(f"laws: additive law, {args.points} points, Hoffmann's grid", laws.measure(args.points, args.bootstrap))


def _eft(args: argparse.Namespace, error: Callable[[str], None]) -> None:
  """Plain against speculative EFT decoding: the table."""
  from bench import eft

  _print_pairs(
    f"eft: plain against speculative EFT decoding ({jax.devices()[0].platform})",
    eft.measure(args.workdir, args.n1, args.n2, args.d_f, args.k, args.tokens),
  )


def _grid(args: argparse.Namespace, error: Callable[[str], None]) -> None:
  """Fine-tunes one by one against packed: the table."""
  from bench import grid

  _print_pairs(
    f"grid: fine-tunes one by one against packed ({jax.devices()[0].platform})",
    grid.measure(args.workdir, args.lanes, tuple(filter(None, args.sizes.split(",")))),
  )


def parser() -> argparse.ArgumentParser:
  """The command's parser: a sub-command per benchmark, each with its own flags."""
  # Flags that sub-commands share.
  step = argparse.ArgumentParser(add_help=False)
  step.add_argument("--seq", type=int, default=256, help="tokens per sequence.")
  step.add_argument("--batch", type=int, default=8, help="sequences per step, over all devices.")
  step.add_argument(
    "--dtype",
    default="auto",
    choices=model_lib.CHOICES["compute_dtype"],
    help="compute dtype (auto: bfloat16 on accelerators, float32 on CPUs).",
  )
  step.add_argument("--vocab", type=int, default=32768, help="vocabulary, as a real LM's, not our world's.")
  step.add_argument("--steps", type=int, default=10, help="timed steps per implementation.")
  step.add_argument("--warmup", type=int, default=2, help="untimed steps after compiling.")
  study = argparse.ArgumentParser(add_help=False)
  study.add_argument("--workdir", default="runs/smoke", help="a finished study's workdir.")

  top = argparse.ArgumentParser(
    prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  commands = top.add_subparsers(dest="command", required=True)

  def add(name: str, description: str, parents: list, run: Callable) -> argparse.ArgumentParser:
    """A sub-command that runs `run(args, error)`, with `error` its own parser's: usage and message."""
    p = commands.add_parser(name, help=description, description=description, parents=parents)
    p.set_defaults(run=lambda args: run(args, p.error))
    return p

  p = add("train", "our training step against a plain-JAX reference (bench/train.py)", [step], _train)
  p.add_argument("--size", default="d128l4", help="ladder sizes, comma-separated.")
  p.add_argument("--remat", default="none", choices=model_lib.CHOICES["remat"], help="remat policy.")
  p.add_argument("--attention", default="auto", choices=model_lib.CHOICES["attention"], help="attention kernel.")
  p.add_argument(
    "--layer-loop",
    default="auto",
    choices=model_lib.CHOICES["layer_loop"],
    help="blocks unrolled or scanned (auto: scanned on accelerators).",
  )
  p.add_argument(
    "--loss-chunk", type=int, default=0, help="our loss's logits made this many positions at a time (0: all at once)."
  )
  p.add_argument("--json", help="also write the rows, every measurement included, to this file.")
  p.add_argument("--hlo", help="also write each compiled step's optimised HLO into this folder.")

  p = add("methods", "each fine-tuning method's train step against full tuning's (bench/methods.py)", [step], _methods)
  p.add_argument("--size", default="d128l4", help="the base's ladder size.")
  p.add_argument("--methods", default="full,lora,prompt,reft,svf", help="methods (default options), comma-separated.")

  p = add("laws", "the vectorised scaling-law fit against a loop of scipy L-BFGS-B (bench/laws.py)", [], _laws)
  p.add_argument("--points", type=int, default=40, help="data points.")
  p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap replicates.")

  p = add("eft", "plain against speculative EFT decoding on a finished study's models (bench/eft.py)", [study], _eft)
  p.add_argument("--n1", help="the base size (default: the study's largest).")
  p.add_argument("--n2", help="the fine-tuned size (default: the study's smallest).")
  p.add_argument("--d-f", type=int, help="the fine-tune's D_f (default: the largest).")
  p.add_argument("--k", type=int, default=4, help="tokens drafted per target pass.")
  p.add_argument("--tokens", type=int, default=48, help="tokens generated per prompt.")

  p = add("grid", "a finished study's fine-tunes one by one against packed (bench/grid.py)", [study], _grid)
  p.add_argument("--lanes", type=int, default=8, help="the most fine-tunes per pack.")
  p.add_argument("--sizes", default="", help="only the fine-tunes of these bases, comma-separated.")
  return top


def main(argv: list[str] | None = None) -> None:
  args = parser().parse_args(argv)
  if args.command in ("laws", "eft", "grid"):
    # The study's runtime: quiet logs and the persistent compilation cache (scaling.run imports
    # TFDS, which `train` and `methods` must not need).
    from scaling import run as run_lib

    run_lib.setup_runtime()
  args.run(args)


if __name__ == "__main__":
  main(sys.argv[1:])
