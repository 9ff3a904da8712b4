"""Exports a finished study's models: every base and fine-tune as a Hugging Face model folder with the
study's tokenizer, and the study config entries that import them.

    python -m scaling.export --workdir W --out DIR

Each model goes to DIR/<run id> (config.json, model.safetensors and the tokenizer: each folder stands
alone), written whole or not at all; a folder already there is kept, so a re-run writes only what is
missing. LoRA and SVF fine-tunes are saved merged; prompt-tuned and LoReFT fine-tunes change
activations, not weights, and are skipped. The entries printed at the end (c.model, c.world, c.data)
go into a study config's get_config(): `model.checkpoints` lists each base with its fine-tunes.
They are also written to DIR/entries.json, which `read_entries` reads (configs/smoke_imported.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from etils import epath

from scaling import context as context_lib
from scaling import grid, hf, kinds, results
from scaling import mesh as mesh_lib
from scaling import run as run_lib
from scaling import sources as sources_lib
from scaling.data import shakespeare
from scaling.data import world as world_lib

ENTRIES = "entries.json"  # Beside the folders: the config groups that import them.


def export_study(workdir: str | epath.Path, out: str | os.PathLike) -> dict:
  """Writes each finished base and fine-tune of the study in `workdir` to `out`/<run id>; returns the study
  config groups that import them: {"model": ..., "world": ..., "data": ...}."""
  if str(out).startswith("gs://"):
    raise ValueError(f"out={out}: a gs:// folder; allowed: a local folder (copy it to the bucket afterwards)")
  workdir, out = results.workdir_path(workdir), epath.Path(os.path.abspath(out))
  if not (workdir / "runs").exists():
    raise ValueError(f"workdir={workdir} has no runs/ folder; allowed: the workdir of a study that a launcher ran")
  records = [r for d in sorted((workdir / "runs").iterdir()) if (r := results.read_result(d)) is not None]
  ids = kinds.planned_ids(workdir)
  if ids is not None:  # The study as study.json plans it, not the runs of its other versions.
    if left := sum(r["id"] not in ids for r in records):
      print(f"left out {left} finished runs in {workdir}/runs that are not of its study.json's study", flush=True)
    records = [r for r in records if r["id"] in ids]
  bases = [r for r in records if r["kind"] in grid.BASE_KINDS]
  if not bases:
    raise ValueError(
      f"workdir={workdir} has no finished pretrain or checkpoint runs; allowed: a study whose bases have finished"
    )
  named: dict[str, str] = {}
  for b in bases:  # A workdir keeps the runs of earlier versions of its study, under other ids.
    other = named.setdefault(_base_name(b), b["id"])
    if other != b["id"]:
      raise ValueError(
        f"workdir={workdir} holds two finished bases named {_base_name(b)!r}, of different specs: {other} and "
        f"{b['id']}; allowed: one base of each name (move the runs of the other version of the study out of "
        f"runs/, or run the study in a new workdir)"
      )
  # Bases first: a base that cannot be saved fails the export before its fine-tunes are loaded.
  exported = [
    r
    for r in bases + [r for r in records if r["kind"] in grid.FINETUNE_KINDS]
    if _export_run(workdir, r["id"], out / r["id"])
  ]
  finetunes: dict[str, list[dict]] = {}
  for r in (r for r in exported if r["kind"] in grid.FINETUNE_KINDS):
    finetunes.setdefault(r["base"], []).append(
      {"path": str(out / r["id"]), "task": r["task"], "method": r["method"], "d_f": r["d_f"], "seed": r["seed"]}
    )
  checkpoints = tuple(
    {
      "name": _base_name(b),
      "path": str(out / b["id"]),
      **({} if b["pretrain_tokens"] is None else {"pretrain_tokens": b["pretrain_tokens"]}),
      "finetunes": tuple(finetunes.get(b["id"], ())),
    }
    for b in bases
  )
  spec = bases[0]["spec"]
  # A world task scores words by the world's tokenizer; any other tokenizer is in every folder.
  tokenizer = "world" if spec.get("tokenizer", "world") == "world" else checkpoints[0]["path"]
  # The world of the fine-tunes, whose tasks the importing study scores; a base's spec lacks the task-only fields.
  world = next((r["spec"]["world"] for r in exported if r["kind"] in grid.FINETUNE_KINDS), spec["world"])
  entries = {
    "model": {"sizes": (), "block": _tuples(spec["block"]), "checkpoints": checkpoints},
    "world": _tuples(world),
    "data": {"tokenizer": tokenizer},
  }
  file = out / ENTRIES
  if not file.exists() or json.loads(file.read_text()) != json.loads(json.dumps(entries)):  # A re-run rewrites nothing.
    results.write_json(file, entries)
  return entries


def _base_name(record: dict) -> str:
  """The name an exported base is imported by: its label (pt-d16l2-1200), or an imported base's own name."""
  return grid.run_label(record["id"]) if record["kind"] == "pretrain" else record["spec"]["size"]


def read_entries(out: str | os.PathLike) -> dict:
  """The config groups that an export to `out` wrote (as `export_study` returned them)."""
  file = epath.Path(out) / ENTRIES
  if not file.exists():
    raise ValueError(f"{out}: no {ENTRIES}; allowed: a folder that python -m scaling.export wrote")
  return _tuples(json.loads(file.read_text()))


def _export_run(workdir: epath.Path, run_id: str, folder: epath.Path) -> bool:
  """Writes one run's model and tokenizer to `folder` unless it is there; False if the model cannot be saved."""
  if (folder / "config.json").exists():
    print(f"kept {run_id}: {folder} is already exported (config.json present)", flush=True)
    return True
  run, _ = run_lib.load_spec(workdir / "runs" / run_id / "spec.json")
  ctx = context_lib.context(run, workdir)
  # Written beside the folder, then moved into place: a killed export leaves no folder that looks complete.
  tmp = folder.parent / f".{folder.name}.export"
  with mesh_lib.activate(ctx.mesh, ctx.rules):
    model = context_lib.load_run_model(ctx, run_id)
    try:
      hf.save(model, tmp)
    except ValueError as e:  # Bases saved already: for a fine-tune, only its method can be what does not fit.
      if run.kind in grid.BASE_KINDS:
        raise
      print(f"skipped {run_id}: {e}", flush=True)
      return False
  save_tokenizer(ctx.sources, tmp)
  if folder.exists():
    folder.rmtree()
  tmp.rename(folder)
  print(f"exported {run_id} to {folder}", flush=True)
  return True


def save_tokenizer(sources: sources_lib.Sources, folder: epath.Path) -> None:
  """Writes the sources' tokenizer to `folder` as files that transformers.AutoTokenizer loads."""
  spec = sources.tokenizer_spec
  if spec not in ("world", "shakespeare"):  # A tokenizer folder: its files as they are.
    for name in hf.TOKENIZER_FILES:
      if (epath.Path(spec) / name).exists():
        (epath.Path(spec) / name).copy(folder / name)
    return
  from transformers import PreTrainedTokenizerFast  # Heavy: imported only where a tokenizer is written.

  tok = (
    sources.world_tokenizer
    if spec == "world"
    else shakespeare.train_tokenizer(
      str(epath.Path(sources.data_dir) / "shakespeare_tokenizer"), sources_lib.SHAKESPEARE_TOKENIZER_SIZE
    )
  )
  PreTrainedTokenizerFast(
    tokenizer_object=tok,
    bos_token=world_lib.BOS,
    eos_token=world_lib.EOS,
    pad_token=world_lib.PAD,
    unk_token=world_lib.UNK,
  ).save_pretrained(str(folder))


def _tuples(value):
  """`value` with its (JSON) lists as tuples: ml_collections overrides need tuples."""
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  return tuple(map(_tuples, value)) if isinstance(value, list) else value


def config_text(entries: dict) -> str:
  """The config groups of `export_study` as lines of a study config's get_config()."""
  lines = ["# The exported models as a study's bases (paste into get_config(), whose ConfigDict is c):"]
  return "\n".join(lines + [f"c.{group} = {value!r}" for group, value in entries.items()])


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
    description="Export a finished study's bases and fine-tunes as Hugging Face "
    "model folders, and print the config entries that import them."
  )
  parser.add_argument("--workdir", required=True, help="The study's workdir (local or gs://).")
  parser.add_argument("--out", required=True, help="A local folder; each model goes to <out>/<run id>.")
  args = parser.parse_args(argv)
  run_lib.setup_runtime()
  try:
    entries = export_study(args.workdir, args.out)
  except ValueError as e:
    sys.exit(f"scaling.export: {e}")
  print(config_text(entries))


if __name__ == "__main__":
  main(sys.argv[1:])
