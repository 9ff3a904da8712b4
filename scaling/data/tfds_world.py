"""The world as a TFDS dataset in array_record format, read back with `tfds.data_source`."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from scaling.data import tfds_text
from scaling.data import world as world_lib


class WorldBuilder(tfds.core.GeneratorBasedBuilder):
  """One TFDS config per world: every split holds records of (prompt, answer, attribute, person)."""

  name = "scaling_world"
  VERSION = tfds.core.Version("1.3.0")
  RELEASE_NOTES = {
    "1.0.0": "Biographies, question answering and cloze probes.",
    "1.1.0": "Cloze probes only from templates whose prefix begins no other attribute's sentence.",
    "1.2.0": "People's popularity (world.zipf), and question answering with wrong answers (task qa_wrong).",
    "1.3.0": "Tasks whose questions are drawn alike for training and test: trivia, and inject (new people).",
  }

  def __init__(self, *, world_config: world_lib.WorldConfig, **kwargs):
    self.world_config = world_config
    config = tfds.core.BuilderConfig(
      name=world_config.fingerprint(), description=json.dumps(dataclasses.asdict(world_config), sort_keys=True)
    )
    super().__init__(config=config, file_format="array_record", **kwargs)

  def _info(self) -> tfds_text.LocalInfo:
    return tfds_text.LocalInfo(
      builder=self,
      description="A synthetic world of people, their biographies, and questions about them.",
      features=tfds.features.FeaturesDict(
        {
          "prompt": tfds.features.Text(),
          "answer": tfds.features.Text(),
          "attribute": tfds.features.Text(),
          "person": np.int32,
        }
      ),
      disable_shuffling=True,
    )  # Keep generation order: splits stay readable and stable.

  def _split_generators(self, dl_manager):
    world = world_lib.build_world(self.world_config)
    return {split: self._generate_examples(world, split) for split in world_lib.splits(self.world_config)}

  def _generate_examples(self, world, split):
    for i, record in enumerate(world_lib.records(world, split)):
      yield i, record


def prepare(world_config: world_lib.WorldConfig, data_dir: str) -> WorldBuilder:
  """Builds the world's dataset under `data_dir` unless it is there already."""
  builder = WorldBuilder(world_config=world_config, data_dir=data_dir)
  if not epath.Path(builder.data_dir).exists():
    tfds.disable_progress_bar()
    builder.download_and_prepare()
  return builder


def data_source(world_config: world_lib.WorldConfig, data_dir: str, split: str):
  """Random-access records of one split."""
  return prepare(world_config, data_dir).as_data_source(split)
