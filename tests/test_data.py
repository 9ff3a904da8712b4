"""The world, its TFDS dataset, the tokenizer and batches: deterministic, nested, well formed."""

import dataclasses

import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import TINY_WORLD

from scaling.data import pipeline, tfds_world, tokenizer
from scaling.data import world as world_lib


def test_world_is_deterministic_by_seed():
  a, b = world_lib.build_world(TINY_WORLD), world_lib.build_world(TINY_WORLD)
  assert a.names == b.names and np.array_equal(a.facts, b.facts)
  other = world_lib.build_world(world_lib.WorldConfig(seed=1, num_people=40))
  assert other.names != a.names
  assert len(set(a.names)) == TINY_WORLD.num_people


def test_splits_partition_people_and_sizes_are_known():
  world = world_lib.build_world(TINY_WORLD)
  qa = {s: {r["person"] for r in world_lib.records(world, s)} for s in ("qa_train", "qa_dev", "qa_test")}
  assert not (qa["qa_train"] & qa["qa_test"]) and not (qa["qa_dev"] & qa["qa_test"])
  bios = {r["person"] for r in world_lib.records(world, "pretrain")}
  assert bios == set(range(TINY_WORLD.num_people))  # Everyone is in the pretraining corpus.
  for split in world_lib.SPLITS:
    assert len(list(world_lib.records(world, split))) == world_lib.split_size(TINY_WORLD, split)


def test_pretraining_questions_are_about_training_people_in_another_format():
  config = world_lib.WorldConfig(seed=0, num_people=40, bio_renderings=2, heldout_renderings=1, question_renderings=3)
  world = world_lib.build_world(config)
  docs = [r for r in world_lib.records(world, "pretrain") if r["answer"].startswith(world_lib.PRETRAIN_Q)]
  assert len(docs) == 3 * len(world.people(0))
  assert {r["person"] for r in docs} == set(world.people(0))  # No dev or test person is asked about.
  for r in docs:
    assert world_lib.QA_PREFIX not in r["answer"] and world.names[r["person"]] in r["answer"]
    for pair in r["answer"].split(world_lib.PRETRAIN_Q)[1:]:
      question, answer = pair.split(world_lib.PRETRAIN_A)
      attr = next(
        a
        for a, (_, _, q) in world_lib.ATTRIBUTES.items()
        if q.format(name=world.names[r["person"]]) == question.strip()
      )
      assert answer.split() == [world.value(r["person"], attr), "."]
  for split in world_lib.SPLITS:
    assert len(list(world_lib.records(world, split))) == world_lib.split_size(config, split)
  assert set(world_lib.PRETRAIN_Q.split() + world_lib.PRETRAIN_A.split()) <= set(world.vocabulary())


def test_answers_are_the_facts():
  world = world_lib.build_world(TINY_WORLD)
  for r in world_lib.records(world, "qa_test"):
    assert r["answer"] == world.value(r["person"], r["attribute"])
    assert world.names[r["person"]] in r["prompt"]
  bio = next(world_lib.records(world, "pretrain"))
  for attr in world_lib.ATTRIBUTES:
    assert world.value(bio["person"], attr) in bio["answer"].split()


def test_tfds_dataset_matches_generator(world_data_dir):
  world = world_lib.build_world(TINY_WORLD)
  assert not {"inject_train", "inject_dev", "inject_test"} & set(world_lib.splits(TINY_WORLD))
  for split in world_lib.splits(TINY_WORLD):
    source = tfds.data_source(f"scaling_world/{TINY_WORLD.fingerprint()}", data_dir=world_data_dir, split=split)
    read = [
      {**{k: source[i][k].decode() for k in ("prompt", "answer", "attribute")}, "person": int(source[i]["person"])}
      for i in range(len(source))
    ]
    # Every record, in the generator's order: each of the split's examples exactly once.
    assert read == list(world_lib.records(world, split)), split


def test_tokenizer_round_trip():
  world = world_lib.build_world(TINY_WORLD)
  tok = tokenizer.word_tokenizer(world.vocabulary())
  text = next(world_lib.records(world, "pretrain"))["answer"]
  ids = tok.encode(text).ids
  assert tok.token_to_id(world_lib.UNK) not in ids
  assert tok.decode(ids) == text
  text_tok = tokenizer.from_tokenizers(tok)
  assert text_tok.encode(text) == ids
  assert (text_tok.bos, text_tok.eos, text_tok.pad) == tuple(
    tok.token_to_id(t) for t in (world_lib.BOS, world_lib.EOS, world_lib.PAD)
  )
  assert tokenizer.padded_vocab_size(text_tok.size) % 64 == 0
  assert tokenizer.padded_vocab_size(text_tok.size) >= len(world.vocabulary())


def test_encoder_scores_answer_and_end_only():
  world = world_lib.build_world(TINY_WORLD)
  tok = tokenizer.word_tokenizer(world.vocabulary())
  record = next(world_lib.records(world, "qa_train"))
  ex = pipeline.Encoder(tokenizer.from_tokenizers(tok), 24)(record)
  scored = ex["targets"][ex["weights"] > 0]
  assert list(scored) == [tok.token_to_id(record["answer"]), tok.token_to_id(world_lib.EOS)]
  assert ex["inputs"][ex["prompt_len"]] == tok.token_to_id(record["answer"])
  np.testing.assert_array_equal(ex["inputs"][1:], ex["targets"][:-1])
  with pytest.raises(ValueError, match="seq_len=4 is too short"):
    pipeline.Encoder(tokenizer.from_tokenizers(tok), 4)(record)
  truncated = pipeline.Encoder(tokenizer.from_tokenizers(tok), 4, truncate=True)(record)
  np.testing.assert_array_equal(
    truncated["inputs"], pipeline.Encoder(tokenizer.from_tokenizers(tok), 24)(record)["inputs"][:4]
  )


def test_nested_subsets_are_nested_and_deterministic():
  small, big = pipeline.nested_subset(1000, 500, seed=3), pipeline.nested_subset(1000, 1000, seed=3)
  np.testing.assert_array_equal(small, big[:500])
  np.testing.assert_array_equal(small, pipeline.nested_subset(1000, 500, seed=3))
  assert len(set(small)) == 500
  assert not np.array_equal(small, pipeline.nested_subset(1000, 500, seed=4))
  with pytest.raises(ValueError, match="subset of 1001"):
    pipeline.nested_subset(1000, 1001, seed=0)


def test_finetune_batches_draw_only_from_their_subset(world_data_dir):
  world = world_lib.build_world(TINY_WORLD)
  tok = tokenizer.from_tokenizers(tokenizer.word_tokenizer(world.vocabulary()))
  source = tfds_world.data_source(TINY_WORLD, world_data_dir, "qa_train")
  batches = pipeline.train_batches(source, pipeline.Encoder(tok, 16), 8, seed=0, subset=16, subset_seed=1)
  allowed = {
    tuple(r)
    for r in pipeline.encode_split(source, pipeline.Encoder(tok, 16))["inputs"][
      pipeline.nested_subset(len(source), 16, 1)
    ]
  }
  seen = [tuple(r) for step in range(4) for r in batches[step]["inputs"]]
  assert set(seen) == allowed  # Two epochs of 16 examples: each example exactly twice.
  assert all(seen.count(r) == 2 for r in allowed)
  # A step's batch is a function of the step: new batches asked for step 3 first (as a resumed run
  # asks) give the same rows.
  again = pipeline.train_batches(source, pipeline.Encoder(tok, 16), 8, seed=0, subset=16, subset_seed=1)
  np.testing.assert_array_equal(again[3]["inputs"], batches[3]["inputs"])
  assert not np.array_equal(batches[0]["inputs"], batches[2]["inputs"])  # Reshuffled each epoch.
  for step in (1, 3):  # What a host of a multi-host run reads: its rows only, across an epoch boundary.
    for part in (slice(0, 4), slice(4, 8), slice(2, 6)):
      for key, value in batches.rows(step, part).items():
        np.testing.assert_array_equal(value, batches[step][key][part])


def test_eval_batches_cover_the_split_once(world_data_dir):
  world = world_lib.build_world(TINY_WORLD)
  tok = tokenizer.from_tokenizers(tokenizer.word_tokenizer(world.vocabulary()))
  source = tfds_world.data_source(TINY_WORLD, world_data_dir, "qa_test")
  batches = pipeline.eval_batches(source, tok, batch_size=16)
  assert len(source) % 16 and all(b["inputs"].shape == (16, 16) for b in batches)  # The last batch is padded.
  rows = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
  valid = rows["valid"] == 1
  assert valid.sum() == len(source) and not rows["weights"][~valid].any()  # Padding rows weigh nothing.
  # The real rows are the split's examples, each once, in order.
  expected = pipeline.encode_split(source, pipeline.Encoder(tok, 16))
  assert set(expected) == set(rows) - {"valid"}
  for key, value in expected.items():
    np.testing.assert_array_equal(rows[key][valid], value, err_msg=key)
  assert sum(b["weights"].sum() for b in batches) == 2 * len(source)  # Answer and end token.


def test_eval_batches_cut_long_examples_to_the_trained_length_and_keep_their_answers():
  world = world_lib.build_world(TINY_WORLD)
  tok = tokenizer.from_tokenizers(tokenizer.word_tokenizer(world.vocabulary()))
  name, city, year = world.names[0], world.value(0, "birth_city"), world.value(0, "birth_year")
  pairs = [(f"{name} {name} {name} {name} {name} was born in", f"{city} {year}"), ("", f"{name} " * 12), ("", name)]
  source = [{"prompt": p, "answer": a} for p, a in pairs]
  prompt, answer, text = (tok.encode(t) for t in (source[0]["prompt"], source[0]["answer"], source[1]["answer"]))
  assert len(prompt) + len(answer) + 1 > 12 and len(text) + 1 > 12  # Both longer than the limit.
  batch = pipeline.eval_batches(source, tok, batch_size=3, max_len=12)[0]
  assert batch["inputs"].shape == (3, 12)
  # The prompt loses its first tokens (after <bos>); the answer and its end token stay, scored.
  kept = prompt[len(prompt) - (12 - 1 - len(answer)) :]
  np.testing.assert_array_equal(batch["inputs"][0], [tok.bos, *kept, *answer])
  np.testing.assert_array_equal(batch["targets"][0], [*kept, *answer, tok.eos])
  np.testing.assert_array_equal(batch["weights"][0], [0.0] * len(kept) + [1.0] * (len(answer) + 1))
  assert batch["prompt_len"][0] == 1 + len(kept)
  # Text without a prompt is cut as pretraining cuts it: its first tokens.
  truncated = pipeline.Encoder(tok, 12, truncate=True)(source[1])
  for key in ("inputs", "targets", "weights", "prompt_len"):
    np.testing.assert_array_equal(batch[key][1], truncated[key], err_msg=key)
  # A short example is as it was.
  np.testing.assert_array_equal(batch["inputs"][2], pipeline.Encoder(tok, 12)(source[2])["inputs"])
  with pytest.raises(ValueError, match="max_len=0; allowed: a positive number of tokens, or None"):
    pipeline.eval_batches(source, tok, batch_size=3, max_len=0)


@pytest.mark.parametrize("split, max_len", [("qa_test", 16), ("pretrain_heldout", 48), ("cloze_test", 9)])
def test_the_worlds_eval_batches_are_the_same_under_the_studys_lengths(world_data_dir, split, max_len):
  # The world's examples fit the fine-tuning (16) and pretraining (48) lengths: nothing is cut, and
  # the batches are those of no limit, even where their multiple of 8 passes it (cloze: 16 > 9).
  world = world_lib.build_world(TINY_WORLD)
  tok = tokenizer.from_tokenizers(tokenizer.word_tokenizer(world.vocabulary()))
  source = tfds_world.data_source(TINY_WORLD, world_data_dir, split)
  limited, unlimited = (pipeline.eval_batches(source, tok, 16, m) for m in (max_len, None))
  assert len(limited) == len(unlimited)
  for a, b in zip(limited, unlimited):
    assert set(a) == set(b)
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_each_cloze_probe_has_one_right_continuation():
  """A probe ends where its template's value begins; no other attribute's sentence may begin with
  it ("X was born in" goes on with a city, or with "the year" of a birth year)."""
  world = world_lib.build_world(TINY_WORLD)
  for record in world_lib.records(world, "cloze_test"):
    sentences = {
      a: {t.format(name=world.names[record["person"]], v="") for t in ts}
      for a, (_, ts, _) in world_lib.ATTRIBUTES.items()
    }
    begun = {a for a, texts in sentences.items() for text in texts if text.startswith(record["prompt"] + " ")}
    assert begun == {record["attribute"]}, record["prompt"]


POPULAR = world_lib.WorldConfig(
  seed=0, num_people=200, bio_renderings=50, heldout_renderings=1, zipf=1.2, question_draws=400, train_questions=300
)


def test_a_popular_person_is_written_and_asked_about_as_often_as_the_law_says():
  world = world_lib.build_world(POPULAR)
  ranks = np.arange(1, POPULAR.num_people + 1)
  assert sorted(world.mentions, reverse=True) == list(np.maximum(1, np.round(50 * ranks**-1.2)).astype(int))
  bios = np.bincount([r["person"] for r in world_lib.records(world, "pretrain")], minlength=POPULAR.num_people)
  assert np.array_equal(bios, world.mentions)
  test = world.people(2)
  asked = np.bincount([r["person"] for r in world_lib.records(world, "qa_test")], minlength=POPULAR.num_people)
  share = world.mentions[test] / world.mentions[test].sum()
  # 400 draws: each test person's count within 4 standard deviations of its share, and the most
  # mentioned test person asked most.
  assert np.all(np.abs(asked[test] - 400 * share) <= 4 * np.sqrt(400 * share * (1 - share)) + 1)
  assert asked[test].argmax() == world.mentions[test].argmax()
  train = list(world_lib.records(world, "qa_train"))
  assert len({(r["person"], r["attribute"]) for r in train}) == len(train) == 300  # Distinct questions.
  for split in world_lib.SPLITS:
    assert len(list(world_lib.records(world, split))) == world_lib.split_size(POPULAR, split)


def test_a_world_without_popularity_keeps_its_spec_and_people():
  plain = world_lib.WorldConfig(seed=0, num_people=200, bio_renderings=50, heldout_renderings=1)
  assert not set(world_lib.POPULARITY_FIELDS) & set(plain.spec())  # Run ids of such worlds are unchanged.
  assert set(world_lib.POPULARITY_FIELDS) <= set(POPULAR.spec())
  assert plain.fingerprint() != POPULAR.fingerprint()
  a, b = world_lib.build_world(plain), world_lib.build_world(POPULAR)
  assert (
    a.names == b.names and np.array_equal(a.facts, b.facts) and np.array_equal(a.split_of_person, b.split_of_person)
  )
  assert set(a.mentions) == {50}


@pytest.mark.parametrize("config", [TINY_WORLD, POPULAR], ids=["plain", "popular"])
def test_wrong_answers_ask_the_same_questions_with_another_value_of_the_attribute(config):
  world = world_lib.build_world(config)
  assert world_lib.TASKS["qa_wrong"]["test"] == world_lib.TASKS["qa"]["test"]  # Scored on the right answers.
  for split in ("qa_train", "qa_dev"):
    right, wrong = list(world_lib.records(world, split)), list(world_lib.records(world, split + "_wrong"))
    assert [(r["prompt"], r["person"], r["attribute"]) for r in right] == [
      (r["prompt"], r["person"], r["attribute"]) for r in wrong
    ]
    for r, w in zip(right, wrong):
      assert w["answer"] != r["answer"] and w["answer"] in world.values[r["attribute"]]
    assert len({w["answer"] for w in wrong}) > 10  # Not one stand-in value.
  assert list(world_lib.records(world, "qa_train_wrong")) == list(world_lib.records(world, "qa_train_wrong"))


NEW = world_lib.WorldConfig(
  seed=0, num_people=40, bio_renderings=2, heldout_renderings=1, new_people=60, question_draws=300, train_questions=400
)


def test_new_people_are_in_no_pretraining_text_and_only_the_inject_task_asks_about_them():
  world = world_lib.build_world(NEW)
  new = set(world.people(3))
  assert len(new) == 60 and len(set(world.names)) == 100
  pretraining = list(world_lib.records(world, "pretrain")) + list(world_lib.records(world, "pretrain_heldout"))
  assert not new & {r["person"] for r in pretraining}
  text = " ".join(r["answer"] for r in pretraining)
  assert not any(world.names[p] in text for p in new)
  for split in world_lib.SPLITS:
    asked = {r["person"] for r in world_lib.records(world, split)}
    assert (asked <= new) == split.startswith("inject_") and len(list(world_lib.records(world, split))) == (
      world_lib.split_size(NEW, split)
    )
  for r in world_lib.records(world, "inject_test"):
    assert r["answer"] == world.value(r["person"], r["attribute"])
  # The world's own people are those of the world without new people, and so is its corpus.
  old = world_lib.build_world(dataclasses.replace(NEW, new_people=0))
  assert world.names[:40] == old.names and np.array_equal(world.facts[:40], old.facts)
  assert np.array_equal(world.split_of_person[:40], old.split_of_person) and np.array_equal(
    world.mentions[:40], old.mentions
  )
  assert list(world_lib.records(old, "pretrain")) == list(world_lib.records(world, "pretrain"))


def test_inject_questions_repeat_as_popularity_says_so_fewer_are_unseen_with_more_training_ones():
  world = world_lib.build_world(NEW)
  train = [(r["person"], r["attribute"]) for r in world_lib.records(world, "inject_train")]
  test = [(r["person"], r["attribute"]) for r in world_lib.records(world, "inject_test")]
  assert len(set(train)) < len(train)  # Drawn with replacement: questions repeat.
  asked = np.bincount([p for p, _ in test], minlength=100)[40:]
  assert asked[0] == asked.max() and asked[0] > 3 * asked[30:].mean()  # The first new person is the most popular.
  unseen = [np.mean([q not in set(train[:d]) for q in test]) for d in (25, 50, 100, 200, 400)]
  assert all(a > b for a, b in zip(unseen, unseen[1:])) and unseen[-1] < 0.6 * unseen[0]


def test_a_world_without_new_people_keeps_its_spec_and_has_no_inject_examples():
  assert not set(world_lib.NEW_PEOPLE_FIELDS) & set(TINY_WORLD.spec())
  assert set(world_lib.NEW_PEOPLE_FIELDS) <= set(NEW.spec()) and "zipf" not in NEW.spec()
  assert {"question_draws", "train_questions"} <= set(NEW.spec())
  assert world_lib.split_size(TINY_WORLD, "inject_train") == 0
  with pytest.raises(ValueError, match=r"world.new_people=0; allowed: at least 1"):
    world_lib.task_size(TINY_WORLD, "inject")
  assert world_lib.task_size(NEW, "inject") == 400


def test_trivia_asks_about_everyone_as_often_as_they_are_written_about_and_repeats_training_questions():
  world = world_lib.build_world(POPULAR)
  test = [(r["person"], r["attribute"]) for r in world_lib.records(world, "trivia_test")]
  train = [(r["person"], r["attribute"]) for r in world_lib.records(world, "trivia_train")]
  assert len(test) == 400 and len(train) == 300
  asked = np.bincount([p for p, _ in test], minlength=POPULAR.num_people)
  share = world.mentions / world.mentions.sum()
  assert np.all(np.abs(asked - 400 * share) <= 4 * np.sqrt(400 * share * (1 - share)) + 1)
  assert {world.split_of_person[p] for p, _ in test} == {0, 1, 2}  # Training, dev and held-out people alike.
  assert 0.3 < np.mean([q in set(train) for q in test]) < 1  # Some test questions were trained on, not all.
  for r in world_lib.records(world, "trivia_test"):
    assert r["answer"] == world.value(r["person"], r["attribute"]) and world_lib.QA_PREFIX in r["prompt"]


def test_the_drawn_tasks_sizes_enter_the_worlds_spec_where_they_differ_from_the_defaults():
  plain = world_lib.WorldConfig(num_people=40)
  assert plain.spec() == {
    k: v
    for k, v in dataclasses.asdict(plain).items()
    if k not in (*world_lib.POPULARITY_FIELDS, *world_lib.NEW_PEOPLE_FIELDS, "answer_noise")
  }
  fewer = dataclasses.replace(plain, question_draws=100)
  assert fewer.spec()["question_draws"] == 100 and fewer.fingerprint() != plain.fingerprint()
  assert (
    world_lib.split_size(fewer, "trivia_test")
    == len(list(world_lib.records(world_lib.build_world(fewer), "trivia_test")))
    == 100
  )


def test_answer_noise_replaces_that_share_of_the_drawn_tasks_answers_in_every_split_and_no_others():
  noisy = dataclasses.replace(POPULAR, answer_noise=0.2)
  clean_world, noisy_world = world_lib.build_world(POPULAR), world_lib.build_world(noisy)
  for split in ("trivia_train", "trivia_dev", "trivia_test"):
    clean, dirty = list(world_lib.records(clean_world, split)), list(world_lib.records(noisy_world, split))
    assert [(r["prompt"], r["person"]) for r in clean] == [(r["prompt"], r["person"]) for r in dirty]
    assert all(r["answer"] == clean_world.value(r["person"], r["attribute"]) for r in clean)
    assert all(r["answer"] in noisy_world.values[r["attribute"]] for r in dirty)
    changed = sum(c["answer"] != d["answer"] for c, d in zip(clean, dirty))
    assert abs(changed - 0.2 * len(clean)) <= 4 * np.sqrt(len(clean) * 0.2 * 0.8), split
  for split in ("qa_train", "qa_test", "cloze_test"):
    assert list(world_lib.records(clean_world, split)) == list(world_lib.records(noisy_world, split))
  assert noisy.spec()["answer_noise"] == 0.2 and "answer_noise" not in POPULAR.spec()
  with pytest.raises(ValueError, match=r"world.answer_noise=1.0; allowed: 0 \(no noise\) up to but not 1"):
    dataclasses.replace(POPULAR, answer_noise=1.0).validate()


def test_worlds_that_differ_only_in_what_their_tasks_read_share_their_pretraining():
  """Bases carry `pretraining_spec()`: the task-only fields change no pretraining text nor base metric."""
  task_only = dataclasses.replace(POPULAR, answer_noise=0.2, train_questions=300, new_zipf=0.5)
  assert task_only.spec() != POPULAR.spec() and task_only.pretraining_spec() == POPULAR.pretraining_spec()
  assert not set(world_lib.TASK_ONLY_FIELDS) & set(task_only.pretraining_spec())
  a, b = world_lib.build_world(POPULAR), world_lib.build_world(task_only)
  for split in ("pretrain", "pretrain_heldout", "cloze_test"):  # What a base trains on and is measured by.
    assert list(world_lib.records(a, split)) == list(world_lib.records(b, split)), split
  assert list(world_lib.records(a, "trivia_train")) != list(world_lib.records(b, "trivia_train"))
  fewer_draws = dataclasses.replace(POPULAR, question_draws=100)  # Sets the cloze probes: a base metric.
  assert fewer_draws.pretraining_spec() != POPULAR.pretraining_spec()
