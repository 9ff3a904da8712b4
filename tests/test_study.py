"""Bad studies fail before any training, with a message naming the field, value and what is allowed."""

import importlib
import json
import os
import re
import subprocess
import sys

import processes
import pytest
from conftest import tiny_study

from scaling import kinds, methods
from scaling import study as study_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize(
  "overrides, message",
  [
    (
      {"finetune.methods": ("full", "prefix")},
      (
        r"finetune.methods\[1\]='prefix' is not a fine-tuning method; allowed: "
        + re.escape(str(sorted(methods.METHODS)))
      ),
    ),
    ({"finetune.d_f": (16, 5000)}, r"finetune.d_f contains 5000, more than the 130 examples .*allowed: 1 to 130"),
    (
      {"mesh.shape": {"data": 3}},
      r"mesh.shape=\{'data': 3\} spans 3 devices, and 3 does not divide the 8 devices here; allowed: sizes whose "
      r"product divides 8",
    ),
    (
      {"mesh.shape": {"data": 4}, "pretrain.train.batch_size": 6},
      r"pretrain.train.batch_size=6 is not divisible by the data axes \('data', 'fsdp'\).*multiple of 4",
    ),
    (
      {"mesh.shape": {"data": 2, "fsdp": 2}, "finetune.train.batch_size": 6},
      r"finetune.train.batch_size=6 is not divisible .*multiple of 4",
    ),
    ({"model.sizes": ("d32l2", "huge")}, r"model.sizes contains 'huge'; allowed: \["),
    (
      {"finetune.tasks": ("translate",)},
      r"finetune.tasks\[0\]='translate' is not a task; allowed: \['inject', 'qa', 'qa_wrong', 'trivia', 'shakespeare_play'\], "
      r"or a TFDS task",
    ),
    (
      {"finetune.tasks": ("inject",)},
      r"task 'inject' asks about new people, and world.new_people=0; allowed: at least 1",
    ),
    (
      {"finetune.tasks": ("shakespeare_play",)},
      r"finetune.tasks\[0\]: task 'shakespeare_play' is real text, which the world's word tokenizer cannot read",
    ),
    ({"data": {"corpus": "poems"}}, r"data.corpus='poems'; allowed: 'world', 'shakespeare', or a TFDS corpus"),
    ({"model.sizes": ()}, r"model.sizes=\[\] and model.checkpoints=\[\]"),
    ({"pretrain.train.lr": 0.1}, r"pretrain.train.lr is not a study field"),
    ({"finetune.train.schedule": "linear"}, r"finetune.train.schedule='linear'; allowed: 'cosine', 'constant'"),
    ({"model.block": {"norm": "batch"}}, r"model.norm='batch'; allowed: 'rms', 'layer'"),
    ({"finetune.d_f": (0, 16)}, r"finetune.d_f=\[0, 16\]; allowed: a non-empty list of positive integers"),
    ({"world.num_people": 5}, r"world.num_people=5; allowed: at least 10"),
    (
      {"eft": {"enabled": True, "pairs": (("d32l2", "d96l3"),)}},
      r"eft.pairs\[0\]=\('d32l2', 'd96l3'\): 'd96l3' is not a base of this study; allowed: \['d32l2'\]",
    ),
    ({"eft": {"enabled": True, "betas": ()}}, r"eft.betas=\[\]; allowed: a non-empty list of finite numbers"),
    (
      {"eft": {"enabled": True, "task": "translate"}},
      r"eft.task='translate' is not a task this study fine-tunes; allowed: \['qa'\]",
    ),
    (
      {"eft": {"enabled": True, "method": "lora"}},
      r"eft.method='lora' is not a method this study fine-tunes with; allowed: \['full'\]",
    ),
    (
      {"eft": {"enabled": True, "d_f": (16, 64)}},
      r"eft.d_f contains 64, which this study does not fine-tune on; allowed: \[16, 32\]",
    ),
    ({"eft": {"enabled": True, "seed": 3}}, r"eft.seed=3 is not a fine-tuning seed of this study; allowed: \[0\]"),
    ({"memory": {"loss_chunk": -8}}, r"memory.loss_chunk=-8; allowed: 0 \(no chunks\) or a positive integer"),
    ({"eval.batch_size": 0}, r"eval.batch_size=0; allowed: a positive integer"),
    # A value listed twice would make two runs of one id (two lanes or two jobs writing one folder).
    ({"finetune.d_f": (16, 16)}, r"finetune.d_f=\[16, 16\] lists 16 twice; allowed: each value once"),
    ({"finetune.seeds": (0, 1, 0)}, r"finetune.seeds=\[0, 1, 0\] lists 0 twice; allowed: each value once"),
    ({"pretrain.steps": (20, 20)}, r"pretrain.steps=\[20, 20\] lists 20 twice"),
    ({"model.sizes": ("d32l2", "d32l2")}, r"model.sizes=\['d32l2', 'd32l2'\] lists 'd32l2' twice"),
    ({"eft": {"enabled": True, "betas": (1.0, 1)}}, r"eft.betas=\[1.0, 1.0\] lists 1.0 twice"),
    ({"transplant": {"enabled": True, "parts": ("lower", "lower")}}, r"transplant.parts=\['lower', 'lower'\] lists"),
    ({"finetune.seeds": (0.5,)}, r"finetune.seeds=\[0.5\]; allowed: a non-empty list of integers"),
    ({"finetune.tasks": ()}, r"finetune.tasks=\[\]; allowed: a non-empty list \(default: \['qa'\]\)"),
    ({"finetune.methods": ()}, r"finetune.methods=\[\]; allowed: a non-empty list \(default: \['full'\]\)"),
    ({"model.block": {"n_layers": 4}}, r"model.block.n_layers is not a block option; allowed: \['attention'"),
    ({"mesh.rules": (("act_batch", "dat"),)}, r"mesh.rules\[0\]=\('act_batch', 'dat'\): 'dat' is not a mesh axis"),
    ({"mesh.rules": (("embed", "fsdp", "tensor"),)}, r"mesh.rules\[0\]=\('embed', 'fsdp', 'tensor'\); allowed: pairs"),
    (
      {"pretrain.train.max_steps": 5000},
      r"pretrain.train.max_steps=5000: .*allowed: leave it out and list the "
      r"budgets in pretrain.steps",
    ),
    ({"pretrain.train.warmup_steps": -5}, r"pretrain.train.warmup_steps=-5; allowed: >= 0"),
    ({"finetune.train.b2": 2.0}, r"finetune.train.b2=2.0; allowed: 0 <= b2 < 1"),
    ({"finetune.train.grad_clip": 0.0}, r"finetune.train.grad_clip=0.0; allowed: > 0"),
    ({"logging.wandb_project": None}, r"logging.wandb_project=None; allowed: a string \('' for none\)"),
    ({"logging.wandb_entity": "lab"}, r"logging.wandb_entity='lab' with logging.wandb_project=''; allowed: a W&B "),
  ],
)
def test_bad_study_names_the_field(overrides, message):
  with pytest.raises(study_lib.StudyError, match=message):
    study_lib.validate(tiny_study(**overrides), num_devices=8)


def test_good_study_resolves_defaults():
  study = study_lib.validate(tiny_study(), num_devices=8)
  assert study.finetune.methods == ("full",)
  assert study.finetune.train.eval_every == 5 and study.finetune.train.weight_decay == 0.0


def test_wandb_logging_is_how_runs_execute_not_what_they_are(monkeypatch):
  """A W&B project changes no run id; where wandb is not installed, it fails validation in one line."""
  plain = kinds.expand(study_lib.validate(tiny_study(), 8))
  logged = kinds.expand(study_lib.validate(tiny_study(**{"logging.wandb_project": "scaling"}), 8))
  assert [r.id for r in logged] == [r.id for r in plain]
  assert {json.dumps(r.execution["logging"], sort_keys=True) for r in logged} == {
    '{"wandb_entity": "", "wandb_group": "tiny", "wandb_project": "scaling"}'
  }
  monkeypatch.setitem(sys.modules, "wandb", None)  # As if not installed.
  with pytest.raises(
    study_lib.StudyError,
    match=r"^logging.wandb_project='scaling' needs Weights & Biases, which is "
    r"not installed; allowed: '' \(off\), or install the extra "
    r"scaling\[wandb\] \(pip install 'scaling\[wandb\]'\)$",
  ):
    study_lib.validate(tiny_study(**{"logging.wandb_project": "scaling"}), 8)


def test_a_disabled_eft_group_is_not_checked_and_its_d_f_follows_the_study(monkeypatch):
  monkeypatch.syspath_prepend(ROOT)  # The configs are a folder of the checkout, not of the package.
  smoke = importlib.import_module("configs.smoke").get_config()
  off = study_lib.validate(
    smoke.to_dict()
    | {
      "eft": {**smoke.eft.to_dict(), "enabled": False, "d_f": (7,)},
      "finetune": {**smoke.finetune.to_dict(), "d_f": (40, 80)},
    },
    1,
  )
  assert off.eft.d_f == (7,)  # Left as written: nothing reads it.
  on = study_lib.validate(smoke.to_dict() | {"finetune": {**smoke.finetune.to_dict(), "d_f": (40, 80, 120)}}, 1)
  assert on.eft.d_f == (40, 120)  # The smallest and the largest.
  assert study_lib.validate(smoke, 1).eft.d_f == (40, 640)
  with pytest.raises(study_lib.StudyError, match=r"^eft.d_f contains 640, which this study does not fine-tune on"):
    study_lib.validate(
      smoke.to_dict()
      | {"eft": {**smoke.eft.to_dict(), "d_f": (640,)}, "finetune": {**smoke.finetune.to_dict(), "d_f": (40, 80)}},
      1,
    )


def test_eft_defaults_resolve_against_the_study():
  study = study_lib.validate(tiny_study(**{"model.sizes": ("d32l2", "d48l2"), "eft": {"enabled": True}}), 8)
  e = study.eft
  assert (e.task, e.method, e.seed, e.pretrain_steps, e.d_f) == ("qa", "full", 0, 20, (16, 32))
  assert e.pairs == (("d32l2", "d32l2"), ("d32l2", "d48l2"), ("d48l2", "d32l2"), ("d48l2", "d48l2"))
  assert 1.0 in e.betas


def _launch(tmp_path, *args):
  return processes.run(
    [sys.executable, "-m", "launch.local", "--config", os.path.join(ROOT, "configs", "smoke.py"), *args],
    cwd=ROOT,
    env={**os.environ, "PYTHONPATH": ROOT},
  )


@pytest.mark.parametrize(
  "args, message",
  [
    (("--config.finetune.methods=('full','lora9')",), "finetune.methods[1]='lora9' is not a fine-tuning method"),
    (("--config.eft.betas=()",), "eft.betas=[]; allowed: a non-empty list"),
    (
      ("--config.finetune.methodz=full",),
      "--config.finetune.methodz: 'methodz' is not a field of finetune; allowed: ['d_f', 'methods', 'pack', 'seeds'",
    ),
    (("--config.evall.batch_size=4",), "'evall' is not a field of the study; allowed: ["),
    (("--config.model.block.rotary_fractoin=0.5",), "the config file does not set rotary_fractoin"),
    (("--workdirr=/tmp/x",), "usage error: Unknown command line flag 'workdirr'"),
    (("--config=/nonexistent/study.py",), "invalid --config: cannot load it ([Errno 2] No such file or directory"),
    # A field that the config file leaves to the defaults is overridable: it reaches validation.
    (("--config.finetune.train.schedule=linear",), "finetune.train.schedule='linear'; allowed: 'cosine'"),
  ],
)
def test_launcher_rejects_mistakes_in_one_line_before_writing_anything(tmp_path, args, message):
  proc = _launch(tmp_path, "--workdir", str(tmp_path / "w"), *args)
  assert proc.returncode != 0 and message in proc.stderr, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr and not (tmp_path / "w").exists()


@pytest.mark.parametrize(
  "body, error",
  [
    ("def get_config():\n  return undefined_name\n", "line 2: NameError: name 'undefined_name' is not defined"),
    ("def get_config(:\n  pass\n", "line 1: SyntaxError: invalid syntax"),
    ("def get_config():\n  return {}['model']\n", "line 2: KeyError: 'model'"),
  ],
)
def test_a_config_file_that_raises_is_named_at_its_line_in_one_line(tmp_path, body, error):
  config = tmp_path / "study.py"
  config.write_text(body)
  proc = processes.run(
    [sys.executable, "-m", "launch.local", "--config", str(config), "--workdir", str(tmp_path / "w")],
    cwd=ROOT,
    env={**os.environ, "PYTHONPATH": ROOT},
  )
  assert proc.returncode != 0 and "Traceback" not in proc.stderr
  assert proc.stderr.startswith(f"invalid --config: {config}, {error}\n"), proc.stderr[-2000:]


def test_launcher_names_a_workdir_it_cannot_create(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("")
  proc = _launch(tmp_path, "--workdir", str(blocker / "w"))
  assert proc.returncode != 0 and f"--workdir {blocker / 'w'}: cannot create it" in proc.stderr
  assert "Traceback" not in proc.stderr
  proc = _launch(tmp_path, "--workdir", str(blocker))  # The workdir is the file itself.
  assert proc.returncode != 0 and "Traceback" not in proc.stderr
  assert f"--workdir {blocker}: a file, not a folder; allowed: a new folder, or a study's workdir" in proc.stderr


def test_launcher_names_what_a_gs_workdir_needs(tmp_path):
  blocked = tmp_path / "blocked" / "gcsfs"  # As on a machine without the gcs extra.
  blocked.mkdir(parents=True)
  (blocked / "__init__.py").write_text("raise ImportError('no gcsfs here')\n")
  env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocked.parent), ROOT])}
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "launch.local",
      "--config",
      os.path.join(ROOT, "configs", "smoke.py"),
      "--workdir",
      "gs://bucket/w",
    ],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == 1 and "Traceback" not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1] == (
    "--workdir gs://bucket/w: a gs:// workdir needs gcsfs; allowed: a "
    "local folder, or gs:// after pip install -e '.[gcs]'"
  )


def test_the_format_or_facts_study_reuses_the_qa_bases_and_fine_tunes_on_wrong_answers_too(monkeypatch):
  monkeypatch.syspath_prepend(ROOT)  # The configs are a folder of the checkout, not of the package.
  qa = kinds.expand(study_lib.validate(importlib.import_module("configs.qa").get_config(), 1))
  study = study_lib.validate(importlib.import_module("configs.format_or_facts").get_config(), 1)
  runs = kinds.expand(study)
  assert {r.id for r in runs if r.kind == "pretrain"} == {r.id for r in qa if r.kind == "pretrain"}
  wrong = [r for r in runs if r.kind == "finetune" and r.config["task"] == "qa_wrong"]
  assert len(wrong) == len([r for r in runs if r.kind == "finetune" and r.config["task"] == "qa"]) == 20
  popular = study_lib.validate(importlib.import_module("configs.popularity").get_config(), 1)
  assert popular.world.zipf == 1.3  # A world whose pretraining differs: new base ids.
  assert not {r.id for r in kinds.expand(popular)} & {r.id for r in qa}
  with pytest.raises(study_lib.StudyError, match=r"world.zipf=-1.0; allowed: 0"):
    study_lib.validate(tiny_study(**{"world.zipf": -1.0}), 8)
  inject = kinds.expand(study_lib.validate(importlib.import_module("configs.inject").get_config(), 1))
  assert {r.config["task"] for r in inject if r.kind == "finetune"} == {"inject"}
  assert not {r.id for r in inject if r.kind == "pretrain"} & {r.id for r in qa}  # New names: a new vocabulary.
  smoke = kinds.expand(study_lib.validate(importlib.import_module("configs.smoke").get_config(), 1))
  assert {r.config["task"] for r in smoke if r.kind in ("finetune", "eft")} == {"trivia"}
  # The smoke world is popularity's with answer noise, which only the tasks read: the two share their bases.
  popular_runs = kinds.expand(popular)
  assert {r.id for r in smoke if r.kind == "pretrain"} == {r.id for r in popular_runs if r.kind == "pretrain"}
  [smoke_ft, *_] = [r for r in smoke if r.kind == "finetune"]
  [popular_ft, *_] = [r for r in popular_runs if r.kind == "finetune"]
  assert smoke_ft.config["world"] == {**popular_ft.config["world"], "answer_noise": 0.1}
