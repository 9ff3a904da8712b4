"""Prepared TFDS text datasets, read by name without TensorFlow or the dataset's builder code.

A dataset is named as TFDS names it, `name[/config][:version]` (`wmt19_translate/de-en`,
`gem/mlsum_de`, `mycorpus:1.0.0`), and found at `data_dir/name/config/version`; `data_dir` is a
local path or a gs:// path (etils.epath). `tfds.builder_from_directory` rebuilds the builder from
the files that preparation wrote (dataset_info.json, features.json), so nothing of the original
builder is imported, and `as_data_source` reads array_record files without TensorFlow.
Records are nested dicts (WMT's `translation` is {"de": text, "en": text}); a `Template` turns
one into a prompt and an answer through dotted feature paths such as `{translation.de}`.
"""

from __future__ import annotations

import dataclasses
import re
import string
from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

_VERSION = re.compile(r"^\d+\.\d+\.\d+$")
_ARRAY_RECORD = tfds.core.file_adapters.FileFormat.ARRAY_RECORD


class LocalInfo(tfds.core.DatasetInfo):
  """The DatasetInfo of a dataset built here: no pre-computed info to fetch from TFDS's bucket."""

  def initialize_from_bucket(self) -> None:
    # TFDS makes a temporary folder before it finds that fetching is off, and leaves it there, empty:
    # one more in the system's temporary folder for every dataset built.
    pass


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A prepared dataset: its name, where it lies, and TFDS's read-only builder of it."""

  name: str  # Canonical: name[/config]:version.
  path: epath.Path
  builder: tfds.core.DatasetBuilder

  @property
  def splits(self) -> list[str]:
    return sorted(self.builder.info.splits)

  @property
  def features(self) -> tfds.features.FeaturesDict:
    return self.builder.info.features

  def num_examples(self, split: str) -> int:
    """Records in one split."""
    self._check_split(split)
    return self.builder.info.splits[split].num_examples

  def source(self, split: str):
    """Random-access records of one split (`len`, `[i]`): nested dicts of numpy values."""
    self._check_split(split)
    return self.builder.as_data_source(split)

  def _check_split(self, split: str) -> None:
    if split.split("[")[0] not in self.builder.info.splits:  # "train[:10%]" slices train.
      raise ValueError(f"dataset {self.name!r} has no split {split!r}; its splits are {self.splits}")


def parse_name(name: str) -> tuple[str, str | None, str | None]:
  """`name[/config][:version]` -> (name, config or None, version or None)."""
  m = re.fullmatch(r"([\w.-]+)(?:/([\w.-]+))?(?::([\w.*]+))?", name)
  if not m or (m[3] and not _VERSION.match(m[3])):
    raise ValueError(
      f"dataset name {name!r} is not of the form name[/config][:version], "
      "e.g. 'wmt19_translate/de-en' or 'mycorpus:1.0.0'"
    )
  return m[1], m[2], m[3]


def _is_prepared(path: epath.Path) -> bool:
  return _VERSION.match(path.name) is not None and (path / "dataset_info.json").exists()


def _versions(path: epath.Path) -> list[str]:
  """Prepared versions under a dataset or config folder, oldest first."""
  if not path.is_dir():
    return []
  found = [p.name for p in path.iterdir() if _is_prepared(p)]
  return sorted(found, key=lambda v: tuple(int(x) for x in v.split(".")))


def available(data_dir: str) -> list[str]:
  """Every prepared dataset under `data_dir`, as `name[/config]:version`."""
  root = epath.Path(data_dir)
  if not root.is_dir():
    return []
  names = []
  for ds in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
    names += [f"{ds.name}:{v}" for v in _versions(ds)]
    for config in sorted(p for p in ds.iterdir() if p.is_dir() and not _VERSION.match(p.name)):
      names += [f"{ds.name}/{config.name}:{v}" for v in _versions(config)]
  return names


def _find(name: str, data_dir: str) -> epath.Path:
  """The version folder of a prepared dataset; the error lists what is there instead."""
  base, config, version = parse_name(name)
  folder = epath.Path(data_dir) / base / (config or "")
  versions = _versions(folder)
  if version in versions or (version is None and versions):
    return folder / (version or versions[-1])
  root = epath.Path(data_dir)
  if not root.is_dir():
    raise ValueError(f"dataset {name!r} is not prepared in data_dir {data_dir!r}: data_dir does not exist")
  found = (
    f"{folder} has versions {versions}"
    if versions
    else f"{folder} holds no prepared version"
    if folder.is_dir()
    else f"there is no folder {folder}"
  )
  hint = ""
  if not config and (root / base).is_dir() and any(not _VERSION.match(p.name) for p in (root / base).iterdir()):
    hint = "; the dataset may have configs: name one, as in 'name/config'"
  raise ValueError(
    f"dataset {name!r} is not prepared in data_dir {data_dir!r}: {found}; "
    f"data_dir holds {available(data_dir) or 'no prepared dataset'}{hint}"
  )


def open_dataset(name: str, data_dir: str) -> Dataset:
  """Opens a prepared array_record dataset from its files alone; fails before any training if it cannot."""
  path = _find(name, data_dir)
  builder = tfds.builder_from_directory(path)
  formats = [builder.info.file_format, *builder.info.alternative_file_formats]
  if _ARRAY_RECORD not in formats:
    stored = ", ".join(str(f.value) if f else "tfrecord" for f in formats)
    raise ValueError(
      f"dataset {name!r} at {path} is stored as {stored}; reading without TensorFlow needs "
      'array_record: prepare it with file_format="array_record" (builder(file_format=...) or '
      "`tfds build --file_format=array_record`), or convert it with `tfds convert_format`"
    )
  if builder.info.file_format != _ARRAY_RECORD:
    builder = tfds.builder_from_directory(path, file_format=_ARRAY_RECORD)
  base, config, _ = parse_name(name)
  return Dataset(f"{base}{'/' + config if config else ''}:{path.name}", path, builder)


def feature_paths(features: Dataset | tfds.features.FeaturesDict) -> list[str]:
  """Dotted paths of the leaf features, such as `translation.de`."""
  features = features.features if isinstance(features, Dataset) else features
  paths = []
  for key, feature in features.items():
    if isinstance(feature, tfds.features.FeaturesDict):  # Translation is one too.
      paths += [f"{key}.{p}" for p in feature_paths(feature)]
    else:
      paths.append(key)
  return sorted(paths)


def _text(value) -> str:
  if isinstance(value, np.ndarray) and value.ndim == 0:
    value = value.item()
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _lookup(record: Mapping, path: str):
  value = record
  for key in path.split("."):
    value = value[key]
  return value


def _parse(field: str, template: str) -> list[tuple[str, str | None]]:
  """(literal text, feature path or None) pieces of a format string with `{dotted.path}` fields."""
  try:
    pieces = list(string.Formatter().parse(template))
  except ValueError as e:
    raise ValueError(f"template {field} {template!r} is malformed: {e}") from None
  for _, path, spec, conversion in pieces:
    if path is not None and (not path or spec or conversion or not re.fullmatch(r"[\w.-]+", path)):
      shown = path + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "")
      raise ValueError(
        f"template {field} {template!r} has field {{{shown}}}; "
        "allowed are plain feature paths such as {translation.de}"
      )
  return [(literal, path) for literal, path, _, _ in pieces]


@dataclasses.dataclass(frozen=True)
class Template:
  """A prompt and an answer as format strings over a record's feature paths: `{translation.de}`."""

  prompt: str
  answer: str

  def __post_init__(self):
    self._pieces()  # Malformed templates fail when made.

  def _pieces(self) -> dict[str, list[tuple[str, str | None]]]:
    return {field: _parse(field, getattr(self, field)) for field in ("prompt", "answer")}

  @property
  def fields(self) -> list[str]:
    """Feature paths the template reads, in order of first use."""
    return list(dict.fromkeys(p for pieces in self._pieces().values() for _, p in pieces if p is not None))

  def check(self, paths: Sequence[str]) -> None:
    """Raises if the template reads a feature that records do not have."""
    for field, pieces in self._pieces().items():
      for _, path in pieces:
        if path is not None and path not in paths:
          raise ValueError(
            f"template {field} reads feature {path!r}, which the dataset lacks; its features are {sorted(paths)}"
          )

  def render(self, record: Mapping) -> dict[str, str]:
    """{"prompt": str, "answer": str} of one record; bytes are decoded as UTF-8."""
    return {
      field: "".join(literal + (_text(_lookup(record, path)) if path is not None else "") for literal, path in pieces)
      for field, pieces in self._pieces().items()
    }


def _translation_builder(
  dataset: str, config: str | None, version: str, languages: Sequence[str]
) -> type[tfds.core.GeneratorBasedBuilder]:
  """A builder class named `dataset` whose records are laid out like a prepared WMT config's."""

  class TranslationBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Sentence pairs as `translation` = {language: text}, as in `wmt19_translate`."""

    name = dataset
    VERSION = tfds.core.Version(version)
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=config)] if config else []

    def __init__(self, *, pairs_by_split, **kwargs):
      self.pairs_by_split = pairs_by_split
      super().__init__(file_format="array_record", **kwargs)

    def _info(self) -> LocalInfo:
      return LocalInfo(
        builder=self,
        description="Parallel sentences in the layout of a prepared WMT translation config.",
        features=tfds.features.FeaturesDict({"translation": tfds.features.Translation(languages=languages)}),
        supervised_keys=tuple(languages),
        disable_shuffling=True,
      )

    def _split_generators(self, dl_manager):
      return {split: self._generate_examples(pairs) for split, pairs in self.pairs_by_split.items()}

    def _generate_examples(self, pairs):
      for i, pair in enumerate(pairs):
        yield i, {"translation": dict(zip(languages, pair, strict=True))}

  return TranslationBuilder


def make_translation_dataset(
  data_dir: str,
  name: str,
  pairs_by_split: Mapping[str, Sequence[Sequence[str]]],
  languages: Sequence[str] = ("de", "en"),
) -> Dataset:
  """Writes sentence pairs (in `languages` order) as dataset `name` under data_dir, unless it is there already.

  For tests and examples: the files have the layout and features of a prepared `wmt19_translate`
  config, so the readers meet here what they will meet in a real one.
  """
  base, config, version = parse_name(name)
  cls = _translation_builder(base, config, version or "1.0.0", languages)
  builder = cls(pairs_by_split=pairs_by_split, data_dir=data_dir)
  tfds.disable_progress_bar()
  builder.download_and_prepare()
  return open_dataset(name, data_dir)
