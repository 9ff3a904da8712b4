"""Real tasks scored by their generations: a study of a TFDS task that names generation metrics and a
format reports them for its fine-tunes and EFT runs; answers line up with their references; greedy
answers by cached decoding are the teacher-forced greedy answers, on a sharded mesh too; bad
generation fields fail validation, naming them."""

import jax
import numpy as np
import pytest
from conftest import tiny_study
from flax import nnx

from launch import local
from scaling import decode, evaluate, kinds, results, sources, text_metrics
from scaling import mesh as mesh_lib
from scaling import model as model_lib
from scaling import study as study_lib
from scaling.data import tfds_text
from scaling.data import world as world_lib

SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]
LEXICON = {"hund": "dog", "katze": "cat", "haus": "house", "baum": "tree", "rot": "red", "gross": "big"}
# Every English side is this sentence, which a tiny model learns in a few steps: its greedy answers
# are then known exactly. The French side (word for word) varies, for the references' order.
ANSWER = "a dog sees the cat"
FRENCH = {"hund": "chien", "katze": "chat", "haus": "maison", "baum": "arbre", "rot": "rouge", "gross": "grand"}
TASK = {
  "name": "const",
  "tfds": "const_tiny/de-en",
  "prompt": "German: {translation.de} English:",
  "answer": " {translation.en}",
  "train": "train",
  "dev": "validation",
  "test": "test",
}
ALL_METRICS = ["exact_match", "f1", "rouge_l", "chrf", "bleu"]


def _triples(n: int, seed: int) -> list[tuple[str, str, str]]:
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    de = list(rng.choice(sorted(LEXICON), size=rng.integers(1, 5)))
    out.append((" ".join(de), ANSWER, " ".join(FRENCH[w] for w in de)))
  return out


def _tokenizer_folder(folder) -> None:
  """A word-level tokenizer, saved as transformers saves one."""
  import transformers
  from tokenizers import Tokenizer, models, pre_tokenizers

  vocab = SPECIALS + ["German:", "English:", "French:"] + sorted(LEXICON) + sorted(set(ANSWER.split()))
  vocab += sorted(FRENCH.values())
  tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  transformers.PreTrainedTokenizerFast(
    tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
  ).save_pretrained(folder)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  root = tmp_path_factory.mktemp("real_task")
  _tokenizer_folder(root / "tokenizer")
  data_dir = str(root / "tfds")
  tfds_text.make_translation_dataset(
    data_dir,
    "const_tiny/de-en",
    {"train": _triples(64, 0), "validation": _triples(8, 1), "test": _triples(7, 2)},
    languages=("de", "en", "fr"),
  )
  return str(root / "tokenizer"), data_dir


def _task(data_dir: str, **fields) -> dict:
  return {**TASK, "data_dir": data_dir, **fields}


def _study(tokenizer: str, data_dir: str, tasks: tuple, **overrides):
  corpus = {
    "tfds": "const_tiny/de-en",
    "data_dir": data_dir,
    "text": "German: {translation.de} English: {translation.en}",
    "train": "train",
    "heldout": "validation",
  }
  return tiny_study(
    **{
      "data": {"corpus": corpus, "tokenizer": tokenizer},
      "finetune.tasks": tasks,
      "pretrain.steps": (10,),
      "finetune.d_f": (32,),
      "finetune.train.max_steps": 20,
      "finetune.train.learning_rate": 1e-2,
      **overrides,
    }
  )


@pytest.mark.slow
def test_a_real_task_study_reports_generation_metrics_for_fine_tunes_and_eft(inputs, tmp_path):
  tokenizer, data_dir = inputs
  task = _task(data_dir, metrics=ALL_METRICS, format=r"[a-z]+( [a-z]+)*")
  eft = {"enabled": True, "d_f": (32,), "betas": (1.0,)}
  study = study_lib.validate(_study(tokenizer, data_dir, (task,), eft=eft), 8)
  runs = kinds.expand(study)
  assert [r.kind for r in runs] == ["pretrain", "finetune", "eft"]
  local.write_plan(study, runs, tmp_path)
  local.execute_all(runs, tmp_path)
  table = results.load_table(tmp_path).set_index("kind")
  # The fine-tune answers the learned sentence to every test prompt: every metric is 1, and every
  # answer is of the format (lower-case words). EFT at beta 1 on one size is the fine-tune's own
  # distribution: the same answers, the same metrics.
  for kind, extra in (("finetune", {"heldout_loss", "base_heldout_loss", "delta_heldout_loss"}), ("eft", set())):
    metrics = {
      c.removeprefix("metrics."): v for c, v in table.loc[kind].items() if c.startswith("metrics.") and not np.isnan(v)
    }
    assert set(metrics) == {"test_loss", *ALL_METRICS, "behaviour", *extra}, kind
    assert all(metrics[name] == pytest.approx(1.0) for name in [*ALL_METRICS, "behaviour"]), (kind, metrics)


def test_answers_line_up_with_their_references(inputs, monkeypatch):
  """Generated tokens that are each test record's own answer, as many as max_answer_tokens allows,
  then the end token where there is room (junk after it), score as those prefixes of the references
  in record order; the padding rows of the last batch count for nothing."""
  tokenizer, data_dir = inputs
  task = _task(
    data_dir, answer="{translation.fr}", metrics=["exact_match", "f1", "chrf"], format=r"\S+ \S+", max_answer_tokens=3
  )
  src = sources.Sources(world_lib.WorldConfig(), "", "world", tokenizer)
  test = src.eval_batches(src.task(task, "test"), 3)
  assert len(test) == 3 and test[-1]["valid"].tolist() == [1, 0, 0]

  def own_answers(mixture, batch, num_new):
    assert num_new == 3  # The task's max_answer_tokens.
    out = np.full((len(batch["inputs"]), int(batch["answer_len"].max()) + 1), src.tok.token_id("chien"))
    for i, (start, length) in enumerate(zip(batch["prompt_len"], batch["answer_len"])):
      out[i, : length + 1] = [*batch["targets"][i, start - 1 : start - 1 + length], src.tok.eos]
    return out[:, :num_new]

  monkeypatch.setattr(evaluate, "generate_answers", own_answers)
  got = src.task_metrics(task, None, test)
  french = [" ".join(FRENCH[w] for w in de.split()) for de, _, _ in _triples(7, 2)]
  prefixes = [" ".join(f.split()[:3]) for f in french]
  recall = [min(len(f.split()), 3) / len(f.split()) for f in french]
  assert got["exact_match"] == pytest.approx(np.mean([len(f.split()) <= 3 for f in french]))
  assert got["f1"] == pytest.approx(np.mean([2 * r / (1 + r) for r in recall]))
  assert got["chrf"] == pytest.approx(text_metrics.chrf(prefixes, french))
  assert got["behaviour"] == pytest.approx(np.mean([len(p.split()) == 2 for p in prefixes]))
  assert 0 < got["exact_match"] < 1 and 0 < got["behaviour"] < 1  # The records differ in length.


def test_cached_greedy_answers_are_the_teacher_forced_ones_on_a_sharded_mesh():
  cfg = model_lib.ladder_config("d32l2", vocab_size=64, init_std=0.3)
  graphdef, params = nnx.split(model_lib.Transformer(cfg, nnx.Rngs(3)))
  rng = np.random.default_rng(0)
  inputs = rng.integers(1, 64, (8, 8))
  batch = {
    "inputs": inputs,
    "targets": np.zeros_like(inputs),
    "weights": np.zeros((8, 8), np.float32),
    "prompt_len": rng.integers(1, 9, 8),
  }
  mesh, rules = mesh_lib.make_mesh({"data": 2, "fsdp": 2, "tensor": 2}), mesh_lib.DEFAULT_RULES
  with mesh_lib.activate(mesh, rules):
    shardings = mesh_lib.state_shardings(params, mesh, rules)
    mixture = decode.Mixture.single(graphdef, jax.device_put(nnx.to_pure_dict(params), shardings), {})
    cached = evaluate.generate_answers(mixture, batch, 6)
    forced, _ = evaluate._greedy_answers(mixture, batch, 6)
  assert cached.shape == (8, 6)
  np.testing.assert_array_equal(cached, forced)


def test_tasks_without_generation_fields_keep_their_runs(inputs):
  """Absent generation fields are not filled in: the task's spec, and so its runs' ids, are as before."""
  tokenizer, data_dir = inputs
  runs = kinds.expand(study_lib.validate(_study(tokenizer, data_dir, (_task(data_dir),)), 8))
  tuned = [r for r in runs if r.kind == "finetune"]
  assert tuned and all(r.config["task_source"] == _task(data_dir) for r in tuned)


@pytest.mark.parametrize(
  "fields, message",
  [
    (
      {"metrics": ["f1", "bleu2"]},
      "finetune.tasks[0].metrics contains 'bleu2'; allowed: ['bleu', 'chrf', 'exact_match', 'f1', 'rouge_l']",
    ),
    ({"metrics": "f1"}, "finetune.tasks[0].metrics='f1'; allowed: a list of names from"),
    ({"format": "([a-z]+"}, "finetune.tasks[0].format='([a-z]+' is not a regular expression (missing ), "),
    ({"metrics": ["f1"], "max_answer_tokens": 0}, "finetune.tasks[0].max_answer_tokens=0; allowed: a positive integer"),
    (
      {"metrics": ["f1"], "max_answer_tokens": "8"},
      "finetune.tasks[0].max_answer_tokens='8'; allowed: a positive integer",
    ),
    ({"max_answer_tokens": 8}, "finetune.tasks[0].max_answer_tokens=8 with no metrics and no format"),
    ({"metric": ["f1"]}, "finetune.tasks[0]: unknown field 'metric'; a TFDS source has the fields"),
  ],
)
def test_bad_generation_fields_fail_validation_naming_them(inputs, fields, message):
  tokenizer, data_dir = inputs
  with pytest.raises(study_lib.StudyError) as e:
    study_lib.validate(_study(tokenizer, data_dir, (_task(data_dir, **fields),)), 8)
  assert message in str(e.value)
