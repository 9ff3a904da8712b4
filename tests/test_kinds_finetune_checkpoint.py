"""Imported fine-tunes: they stand in for the grid cells they cover and take labels of their own; EFT
pairs and speculative EFT take imported models; mixtures of models with different tokenizers, and
fine-tunes of another architecture, fail validation naming them. (A study exported and imported whole,
reproducing its EFT grid, is in tests/test_export.py.)"""

import json
import shutil

import jax
import numpy as np
import pytest
from conftest import TINY_WORLD, tiny_study
from flax import nnx

from scaling import decode, eft, export, grid, hf, kinds, sources
from scaling import model as model_lib
from scaling import study as study_lib

BASES = (("small", "d16l2", 0), ("large", "d32l2", 1))


def _folder(path, size: str, seed: int) -> str:
  """A random model of a ladder size as a Hugging Face folder, with the tiny world's tokenizer."""
  vocab = sources.model_vocab_size(TINY_WORLD, "world")
  hf.save(model_lib.Transformer(model_lib.ladder_config(size, vocab, init_std=0.3), nnx.Rngs(seed)), path)
  export.save_tokenizer(sources.Sources(TINY_WORLD, ""), path)
  return str(path)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
  """name -> (base folder, [fine-tune folders at D_f 16 and 32]): random models standing in for trained ones."""
  root = tmp_path_factory.mktemp("folders")
  return {
    name: (
      _folder(root / name, size, seed),
      [_folder(root / f"{name}-df{d_f}", size, 10 * seed + d_f) for d_f in (16, 32)],
    )
    for name, size, seed in BASES
  }


def _entry(folders, name: str, finetunes=None) -> dict:
  base, tuned = folders[name]
  if finetunes is None:
    finetunes = tuple({"path": path, "task": "qa", "method": "full", "d_f": d_f} for path, d_f in zip(tuned, (16, 32)))
  return {"name": name, "path": base, "finetunes": finetunes}


def _study(*checkpoints, **overrides):
  return tiny_study(
    **{
      "model": {"sizes": (), "checkpoints": checkpoints},
      "data": {"tokenizer": "world"},
      "eft": {"enabled": True, "betas": (1.0,)},
      **overrides,
    }
  )


def test_imported_fine_tunes_stand_in_for_their_grid_cells(folders):
  # Only the small base's D_f=16 fine-tune imported: its other cells, and all of the large base's, train here.
  small = _entry(folders, "small")
  study = study_lib.validate(_study({**small, "finetunes": small["finetunes"][:1]}, _entry(folders, "large", ())), 1)
  runs = kinds.expand(study)
  tuned = {(r.config["size"], r.config["d_f"]): r for r in runs if r.kind in grid.FINETUNE_KINDS}
  assert {k: r.kind for k, r in tuned.items()} == {
    ("small", 16): "finetune_checkpoint",
    ("small", 32): "finetune",
    ("large", 16): "finetune",
    ("large", 32): "finetune",
  }
  imported = tuned[("small", 16)]
  assert imported.config["imported"] == {
    "path": folders["small"][1][0],
    "content": hf.content_id(folders["small"][1][0]),
  }
  assert imported.deps == (next(r.id for r in runs if r.kind == "checkpoint" and r.config["size"] == "small"),)
  # EFT takes imported and trained fine-tunes alike: N2 = small at D_f 16 is the imported one.
  efts = {(r.config["size"], r.config["finetune_size"], r.config["d_f"]): r for r in runs if r.kind == "eft"}
  assert len(efts) == 8 and efts[("large", "small", 16)].config["finetuned"] == imported.id
  assert efts[("large", "small", 32)].config["finetuned"] == tuned[("small", 32)].id


def test_an_instruct_label_with_nothing_fine_tuned_here(folders):
  # As a base with its instruct checkpoint: a label of its own, and finetune.methods=() trains nothing here.
  instruct = ({"path": folders["small"][1][1], "method": "instruct", "d_f": 1000},)
  study = study_lib.validate(
    _study(_entry(folders, "small", instruct), _entry(folders, "large", ()), **{"finetune.methods": ()}), 1
  )
  assert (study.eft.task, study.eft.method, study.eft.seed, study.eft.d_f) == ("qa", "instruct", 0, (1000,))
  assert study.eft.pairs == (("small", "small"), ("large", "small"))  # Only small has an instruct N2.
  runs = kinds.expand(study)
  assert sorted(r.kind for r in runs) == ["checkpoint"] * 2 + ["eft"] * 2 + ["finetune_checkpoint"]
  with pytest.raises(
    study_lib.StudyError,
    match=(
      r"^eft.pairs\[0\]=\('small', 'large'\): 'large' has no fine-tune of task 'qa', method 'instruct', seed 0; "
      r"allowed: pairs whose N2 has one: \['small'\]$"
    ),
  ):
    study_lib.validate(
      _study(
        _entry(folders, "small", instruct),
        _entry(folders, "large", ()),
        **{"finetune.methods": (), "eft": {"enabled": True, "pairs": (("small", "large"),)}},
      ),
      1,
    )
  # D_f defaults to those that every N2 has; one that an N2 lacks is named.
  tuned = lambda name, d_fs: _entry(
    folders, name, tuple({"path": folders[name][1][0], "method": "tuned", "d_f": d} for d in d_fs)
  )
  both = (tuned("small", (16, 32)), tuned("large", (16,)))
  assert study_lib.validate(_study(*both, **{"finetune.methods": ()}), 1).eft.d_f == (16,)
  with pytest.raises(
    study_lib.StudyError,
    match=(
      r"^eft.pairs\[1\]=\('small', 'large'\): 'large' has no fine-tune at D_f=32 of task 'qa', method 'tuned', seed 0; "
      r"allowed: pairs whose N2 has one \(its D_f: \[16\]\), or eft.d_f that every N2 has$"
    ),
  ):
    study_lib.validate(_study(*both, **{"finetune.methods": (), "eft": {"enabled": True, "d_f": (32,)}}), 1)
  with pytest.raises(
    study_lib.StudyError,
    match=r"^finetune.methods=\[\]; allowed: a non-empty list .*or \[\] with "
    r"fine-tunes imported in model.checkpoints",
  ):
    study_lib.validate(_study(_entry(folders, "small", ()), **{"finetune.methods": ()}), 1)


def test_speculative_eft_decodes_imported_models_as_plain_eft(folders):
  def model(folder):
    graphdef, params = nnx.split(hf.load(folder))
    return decode.Model(graphdef, nnx.to_pure_dict(params), {})

  (small, small_tuned), (large, _) = folders["small"], folders["large"]
  mixture = decode.Mixture.of([model(large), model(small_tuned[1]), model(small)], eft.weights(1.0))
  prompts, lengths = np.asarray(jax.random.randint(jax.random.key(0), (3, 6), 4, 60)), np.asarray([2, 4, 6])
  plain = decode.generate(mixture, prompts, lengths, jax.random.key(0), num_new=6)
  spec, _ = decode.speculative_generate(
    mixture, prompts, lengths, jax.random.key(0), num_new=6, k=2, draft=eft.TERMS.index("finetuned_n2")
  )
  np.testing.assert_array_equal(np.asarray(spec), np.asarray(plain))


def _swap_two_tokens(folder) -> None:
  """The folder's tokenizer with two tokens' ids exchanged: the same size, a different tokenizer."""
  file = folder / "tokenizer.json"
  tok = json.loads(file.read_text())
  vocab = tok["model"]["vocab"]
  a, b = sorted(vocab)[-2:]
  vocab[a], vocab[b] = vocab[b], vocab[a]
  file.write_text(json.dumps(tok))


def test_mixtures_must_share_a_tokenizer_and_fine_tunes_their_base(folders, tmp_path):
  small, large = _entry(folders, "small"), _entry(folders, "large")
  odd = tmp_path / "odd"
  shutil.copytree(large["path"], odd)
  _swap_two_tokens(odd)
  with pytest.raises(
    study_lib.StudyError,
    match=(
      rf"^eft.pairs\[0\]=\('small', 'large'\): the models of a mixture must share a tokenizer, but folder "
      rf"{small['path']} and folder {odd} differ \(token '.*' has id \d+ against \d+\); allowed: models whose "
      r"tokenizers are the same$"
    ),
  ):
    study_lib.validate(
      _study(
        small,
        {**large, "path": str(odd), "finetunes": ()},
        **{"eft": {"enabled": True, "pairs": (("small", "large"),)}},
      ),
      1,
    )
  # An imported fine-tune with a tokenizer of its own is compared too: N2's fine-tune against N1's base.
  tuned_odd = tmp_path / "tuned-odd"
  shutil.copytree(folders["large"][1][0], tuned_odd)
  _swap_two_tokens(tuned_odd)
  with pytest.raises(study_lib.StudyError, match=rf"but folder {small['path']} and folder {tuned_odd} differ"):
    study_lib.validate(
      _study(
        small,
        {**large, "finetunes": ({**large["finetunes"][0], "path": str(tuned_odd)},)},
        **{"eft": {"enabled": True, "pairs": (("small", "large"),), "d_f": (16,)}},
      ),
      1,
    )
  # A fine-tune whose folder is another size is not a fine-tune of that base.
  with pytest.raises(
    study_lib.StudyError,
    match=(
      rf"^model.checkpoints\[0\].finetunes\[0\].path: {large['path']} is not a fine-tune of {small['path']}: their "
      r"architectures differ in \['d_model'"
    ),
  ):
    study_lib.validate(_study({**small, "finetunes": ({**small["finetunes"][0], "path": large["path"]},)}), 1)
  # A folder without a tokenizer, where the study takes its tokenizer from the first checkpoint.
  bare = tmp_path / "bare"
  shutil.copytree(small["path"], bare, ignore=shutil.ignore_patterns("tokenizer*", "special_tokens*"))
  with pytest.raises(
    study_lib.StudyError,
    match=(
      rf"^data.tokenizer: {bare}: no tokenizer \(tokenizer.json or tokenizer.model or vocab.json\).*"
      r"allowed: a folder with a tokenizer, named in data.tokenizer$"
    ),
  ):
    study_lib.validate(_study({**small, "path": str(bare), "finetunes": ()}, data={"tokenizer": ""}), 1)


@pytest.mark.parametrize(
  "field, value, message",
  [
    ("d_f", 0, r"model.checkpoints\[0\].finetunes\[0\].d_f=0; allowed: a positive integer, the examples it was tuned"),
    (
      "task",
      "mmlu",
      r"model.checkpoints\[0\].finetunes\[0\].task='mmlu' is not a task this study fine-tunes; "
      r"allowed: \['qa'\]",
    ),
    ("seed", "0", r"model.checkpoints\[0\].finetunes\[0\].seed='0'; allowed: an integer"),
    ("steps", 5, r"model.checkpoints\[0\].finetunes\[0\]=\{.*\}; allowed: a dict with 'path' and 'd_f'"),
  ],
)
def test_bad_imported_fine_tunes_are_named(folders, field, value, message):
  small = _entry(folders, "small")
  with pytest.raises(study_lib.StudyError, match=f"^{message}"):
    study_lib.validate(_study({**small, "finetunes": ({**small["finetunes"][0], field: value},)}), 1)
