"""scaling.export: a finished study's bases and fine-tunes as Hugging Face folders that stand alone (weights
and the study's tokenizer), and the config entries that import them; a second study that imports them
reproduces the first one's EFT grid without training; a re-run rewrites nothing."""

import contextlib
import io
import itertools
import json
import shutil

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import tiny_study
from flax import nnx

from analysis import eft as eft_analysis
from launch import local
from scaling import context as context_lib
from scaling import export, grid, hf, kinds, results
from scaling import mesh as mesh_lib
from scaling import run as run_lib
from scaling import sources as sources_lib
from scaling import study as study_lib
from scaling.data import world as world_lib

STUDY = {
  "model.sizes": ("d16l2", "d32l2"),
  "finetune.methods": ("full", {"name": "prompt", "length": 4}),
  "finetune.d_f": (16, 32),
  # Read only by the tasks: in the fine-tunes' world and not in the bases' (`WorldConfig.pretraining_spec`).
  "world.answer_noise": 0.1,
  "eft": {"enabled": True, "betas": (1.0,)},
  # Checkpoints only at each run's end: nothing here resumes, and every save costs a fraction of a second.
  "pretrain.train.checkpoint_every": 20,
  "finetune.train.checkpoint_every": 20,
}
pytestmark = pytest.mark.slow  # Its fixture runs and exports a study.
FILES = ("config.json", "model.safetensors", "tokenizer.json")
# One program per model, not one per op (as an eager call compiles them).
logits = nnx.jit(lambda model, tokens: model(tokens))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  """A finished tiny study (two bases; full and prompt fine-tunes at two D_f; EFT over the full ones),
  exported once: (workdir, out, its records by id, the returned entries, the printed lines)."""
  root = tmp_path_factory.mktemp("export")
  workdir, out = root / "study", root / "models"
  study = study_lib.validate(tiny_study(**STUDY), 8)
  runs = kinds.expand(study)
  local.write_plan(study, runs, workdir)
  local.execute_all(runs, workdir)
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    entries = export.export_study(workdir, out)
  records = {r.id: results.read_result(workdir / "runs" / r.id) for r in runs}
  return workdir, out, records, entries, printed.getvalue().splitlines()


def _of_kind(records, kind, method=None):
  return [r for r in records.values() if r["kind"] == kind and (method is None or r["method"].startswith(method))]


def test_bases_and_full_fine_tunes_are_folders_and_prompt_tuning_is_skipped(exported):
  _, out, records, _, lines = exported
  saved = _of_kind(records, "pretrain") + _of_kind(records, "finetune", "full")
  assert len(saved) == 6
  for r in saved:
    assert all((out / r["id"] / name).exists() for name in FILES), r["id"]
    assert f"exported {r['id']} to {out / r['id']}" in lines
  prompt = _of_kind(records, "finetune", "prompt")
  assert len(prompt) == 4
  for r in prompt:
    assert not (out / r["id"]).exists()
    [line] = [x for x in lines if r["id"] in x]
    assert line.startswith(f"skipped {r['id']}: ") and "cannot be saved" in line
  # No temporary folders left; the entries that import the folders beside them.
  assert sorted(p.name for p in out.iterdir()) == sorted([r["id"] for r in saved] + [export.ENTRIES])


def test_a_folders_tokenizer_encodes_as_the_study_did(exported):
  from transformers import AutoTokenizer

  workdir, out, records, _, _ = exported
  base = _of_kind(records, "pretrain")[0]
  tuned = _of_kind(records, "finetune", "full")[0]
  ctx = context_lib.context(run_lib.load_spec(workdir / "runs" / base["id"] / "spec.json")[0], workdir)
  texts = [r["answer"] for r in itertools.islice(world_lib.records(ctx.sources.world, "pretrain"), 3)]
  texts += [
    r["prompt"] + " " + r["answer"] for r in itertools.islice(world_lib.records(ctx.sources.world, "qa_test"), 3)
  ]
  texts.append(f"{world_lib.BOS} an unheard-of word {world_lib.EOS}")  # Specials, and words out of the vocabulary.
  for folder in (out / base["id"], out / tuned["id"]):
    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    for text in texts:
      assert tok(text)["input_ids"] == ctx.tok.encode(text) == ctx.sources.world_tokenizer.encode(text).ids
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (ctx.tok.bos, ctx.tok.eos, ctx.tok.pad)
  assert ctx.sources.world_tokenizer.token_to_id(world_lib.UNK) in ctx.tok.encode(texts[-1])


def test_a_tokenizer_folder_travels_as_its_files(exported, tmp_path):
  _, out, records, _, _ = exported
  folder = out / _of_kind(records, "pretrain")[0]["id"]  # An exported folder, as a later study's data.tokenizer.
  export.save_tokenizer(sources_lib.Sources(world_lib.WorldConfig(), "", "world", str(folder)), tmp_path)
  names = [name for name in hf.TOKENIZER_FILES if (folder / name).exists()]
  assert "tokenizer.json" in names and sorted(p.name for p in tmp_path.iterdir()) == sorted(names)
  assert all((tmp_path / name).read_bytes() == (folder / name).read_bytes() for name in names)


def test_exported_weights_give_the_runs_logits(exported):
  workdir, out, records, _, _ = exported
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 40, (2, 12)))
  for r in _of_kind(records, "pretrain") + _of_kind(records, "finetune", "full"):
    ctx = context_lib.context(run_lib.load_spec(workdir / "runs" / r["id"] / "spec.json")[0], workdir)
    with mesh_lib.activate(ctx.mesh, ctx.rules):
      want = np.asarray(logits(context_lib.load_run_model(ctx, r["id"]).module(), tokens))
    got = np.asarray(logits(hf.load(out / r["id"]), tokens))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
  # The fine-tunes moved away from their base: each folder holds its own run's weights.
  base, tuned = (
    logits(hf.load(out / r["id"]), tokens)
    for r in _of_kind(records, "pretrain")[:1] + _of_kind(records, "finetune", "full")[:1]
  )
  assert np.abs(np.asarray(base) - np.asarray(tuned)).max() > 1e-3


def test_entries_import_each_base_with_its_weight_fine_tunes(exported):
  _, out, records, entries, _ = exported
  bases = sorted(_of_kind(records, "pretrain"), key=lambda r: r["id"])
  want = []
  for base, size in zip(bases, ("d16l2", "d32l2")):
    full = sorted((r for r in _of_kind(records, "finetune", "full") if r["base"] == base["id"]), key=lambda r: r["d_f"])
    assert base["id"] == f"pt-{size}-20-{base['id'][-10:]}" and base["pretrain_tokens"] > 0
    want.append(
      {
        "name": f"pt-{size}-20",
        "path": str(out / base["id"]),
        "pretrain_tokens": base["pretrain_tokens"],
        "finetunes": tuple(
          {"path": str(out / r["id"]), "task": "qa", "method": "full", "d_f": d_f, "seed": 0}
          for r, d_f in zip(full, (16, 32))
        ),
      }
    )
  got = entries["model"]["checkpoints"]
  assert got == tuple(want)
  base = bases[0]
  assert entries["model"]["sizes"] == () and entries["model"]["block"] == base["spec"]["block"]
  # The fine-tunes' world, whose tasks an importing study scores, not the bases' (which lacks the task-only fields).
  assert entries["world"] == full[0]["spec"]["world"] and entries["world"]["answer_noise"] == 0.1
  assert "answer_noise" not in base["spec"]["world"] and entries["data"] == {"tokenizer": "world"}
  # As printed: Python that a study config runs.
  c = ml_collections.ConfigDict()
  exec(export.config_text(entries), {}, {"c": c})
  assert c.model.checkpoints == got and c.world.to_dict() == entries["world"] and c.data.tokenizer == "world"
  study = study_lib.resolve(c)
  assert study.model.sizes == () and study.model.checkpoints[0]["finetunes"][1]["d_f"] == 32
  assert export.read_entries(out) == entries  # As configs read them from the export's folder.


def test_an_imported_study_reproduces_the_native_eft_grid_without_training(exported, tmp_path):
  workdir, _, records, entries, _ = exported
  study = study_lib.validate(tiny_study(**{**STUDY, "finetune.methods": ("full",), **entries}), 8)
  runs = kinds.expand(study)
  local.write_plan(study, runs, tmp_path)
  local.execute_all(runs, tmp_path)
  imported = [results.read_result(tmp_path / "runs" / r.id) for r in runs]
  assert sorted(r["kind"] for r in imported) == ["checkpoint"] * 2 + ["eft"] * 8 + ["finetune_checkpoint"] * 4
  name = lambda size: size.split("-")[1] if size.startswith("pt-") else size  # pt-d16l2-20 -> d16l2
  # Cells of the full fine-tunes (the prompt-tuned ones were not exported) and of the EFT runs over them.
  by_cell = lambda rs, kind: {
    (name(r["size"]), name(r.get("finetune_size", "")), r["d_f"]): r["metrics"]
    for r in rs
    if r["kind"] == kind and r["method"] == "full"
  }
  for native_kind, kind, count in (("eft", "eft", 8), ("finetune", "finetune_checkpoint", 4)):
    native, got = by_cell(records.values(), native_kind), by_cell(imported, kind)
    assert got.keys() == native.keys() and len(got) == count
    for key, metrics in native.items():
      assert got[key].keys() == metrics.keys() and got[key] == pytest.approx(metrics, abs=1e-4), key
  # The decoupling table gives the same verdicts.
  verdicts = lambda w: {
    (f["metric"], f["beta"]): f["follows"]
    for f in eft_analysis.fit_eft(results.load_table(w))
    if f["analysis"] == "decoupling"
  }
  assert verdicts(tmp_path) == verdicts(workdir) and verdicts(workdir)


def test_export_again_rewrites_nothing(exported, capsys):
  workdir, out, records, entries, _ = exported
  files = sorted(p for p in out.rglob("*") if p.is_file())
  mtimes = [p.stat().st_mtime_ns for p in files]
  export.main(["--workdir", str(workdir), "--out", str(out)])
  lines = capsys.readouterr().out.splitlines()
  assert sorted(p for p in out.rglob("*") if p.is_file()) == files
  assert [p.stat().st_mtime_ns for p in files] == mtimes
  saved = _of_kind(records, "pretrain") + _of_kind(records, "finetune", "full")
  assert {x for x in lines if x.startswith("kept ")} == {
    f"kept {r['id']}: {out / r['id']} is already exported (config.json present)" for r in saved
  }
  assert not any(x.startswith("exported ") for x in lines)
  assert f"c.model = {entries['model']!r}" in lines


def test_runs_of_another_version_of_the_study_are_left_out(exported, tmp_path, capsys):
  workdir, _, records, _, _ = exported
  (tuned,) = [r for r in _of_kind(records, "finetune", "full") if r["d_f"] == 16 and r["size"] == "d16l2"]
  stale = workdir / "runs" / f"{grid.run_label(tuned['id'])}-0000000000"  # The same cell, another spec.
  shutil.copytree(workdir / "runs" / tuned["id"], stale)
  (stale / "result.json").write_text(json.dumps({**tuned, "id": stale.name}))
  try:
    entries = export.export_study(workdir, tmp_path / "models")
  finally:
    shutil.rmtree(stale)
  assert f"left out 1 finished runs in {workdir}/runs that are not of its study.json's study" in capsys.readouterr().out
  assert not (tmp_path / "models" / stale.name).exists() and (tmp_path / "models" / tuned["id"]).exists()
  paths = [ft["path"] for ck in entries["model"]["checkpoints"] for ft in ck["finetunes"]]
  assert str(tmp_path / "models" / tuned["id"]) in paths and not any(stale.name in p for p in paths)


def test_bad_workdir_and_out_fail_in_one_line(tmp_path, capsys):
  with pytest.raises(ValueError, match=r"out=gs://bucket/models: a gs:// folder; allowed: a local folder"):
    export.export_study(tmp_path, "gs://bucket/models")
  with pytest.raises(SystemExit, match=r"^scaling.export: workdir=.* has no runs/ folder; allowed: "):
    export.main(["--workdir", str(tmp_path), "--out", str(tmp_path / "models")])
  (tmp_path / "runs" / "pt-d32l2-20-0123456789").mkdir(parents=True)  # Planned, not finished.
  with pytest.raises(ValueError, match="no finished pretrain or checkpoint runs"):
    export.export_study(tmp_path, tmp_path / "models")
  for run_id in ("pt-d32l2-20-0123456789", "pt-d32l2-20-abcdef0123"):  # One label, two specs: two versions.
    (tmp_path / "runs" / run_id).mkdir(parents=True, exist_ok=True)
    (tmp_path / "runs" / run_id / "result.json").write_text(json.dumps({"id": run_id, "kind": "pretrain"}))
  with pytest.raises(ValueError, match=r"two finished bases named 'pt-d32l2-20', of different specs: "):
    export.export_study(tmp_path, tmp_path / "models")
  assert not (tmp_path / "models").exists()
