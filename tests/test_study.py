"""Bad studies fail before any training, with a message naming the field, value and what is allowed."""

import os
import re
import sys

import processes
import pytest
from conftest import tiny_study

from scaling import methods
from scaling import study as study_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("overrides, message", [
    ({"finetune.methods": ("full", "prefix")}, (r"finetune.methods\[1\]='prefix' is not a fine-tuning method; allowed: "
                                                + re.escape(str(sorted(methods.METHODS))))),
    ({"finetune.d_f": (16, 5000)}, r"finetune.d_f contains 5000, more than the 130 examples .*allowed: 1 to 130"),
    ({"mesh.shape": {"data": 3}}, r"mesh.shape=\{'data': 3\} has 3 devices, which does not divide the 8 devices"),
    ({"mesh.shape": {"data": 4}, "pretrain.train.batch_size": 6},
     r"pretrain.train.batch_size=6 is not divisible by the data axes \('data', 'fsdp'\).*multiple of 4"),
    ({"mesh.shape": {"data": 2, "fsdp": 2}, "finetune.train.batch_size": 6},
     r"finetune.train.batch_size=6 is not divisible .*multiple of 4"),
    ({"model.sizes": ("d32l2", "huge")}, r"model.sizes contains 'huge'; allowed: \["),
    ({"finetune.tasks": ("translate",)},
     r"finetune.tasks\[0\]='translate' is not a task; allowed: \['qa', 'shakespeare_play'\], or a TFDS task"),
    ({"finetune.tasks": ("shakespeare_play",)},
     r"finetune.tasks\[0\]: task 'shakespeare_play' is real text, which the world's word tokenizer cannot read"),
    ({"data": {"corpus": "poems"}}, r"data.corpus='poems'; allowed: 'world', 'shakespeare', or a TFDS corpus"),
    ({"model.sizes": ()}, r"model.sizes=\[\] and model.checkpoints=\[\]"),
    ({"pretrain.train.lr": 0.1}, r"pretrain.train.lr is not a study field"),
    ({"finetune.train.schedule": "linear"}, r"finetune.train.schedule='linear'; allowed: 'cosine', 'constant'"),
    ({"model.block": {"norm": "batch"}}, r"model.norm='batch'; allowed: 'rms', 'layer'"),
    ({"finetune.d_f": (0, 16)}, r"finetune.d_f=\[0, 16\]; allowed: a non-empty list of positive integers"),
    ({"world.num_people": 5}, r"world.num_people=5; allowed: at least 10"),
    ({"eft": {"enabled": True, "pairs": (("d32l2", "d96l3"),)}},
     r"eft.pairs\[0\]=\('d32l2', 'd96l3'\): 'd96l3' is not a size of this study; allowed: \['d32l2'\]"),
    ({"eft": {"enabled": True, "betas": ()}}, r"eft.betas=\[\]; allowed: a non-empty list of finite numbers"),
    ({"eft": {"enabled": True, "task": "translate"}},
     r"eft.task='translate' is not a task this study fine-tunes; allowed: \['qa'\]"),
    ({"eft": {"enabled": True, "method": "lora"}},
     r"eft.method='lora' is not a method this study fine-tunes with; allowed: \['full'\]"),
    ({"eft": {"enabled": True, "d_f": (16, 64)}},
     r"eft.d_f contains 64, which this study does not fine-tune on; allowed: \[16, 32\]"),
    ({"eft": {"enabled": True, "seed": 3}}, r"eft.seed=3 is not a fine-tuning seed of this study; allowed: \[0\]"),
    ({"memory": {"loss_chunk": -8}}, r"memory.loss_chunk=-8; allowed: 0 \(no chunks\) or a positive integer"),
])
def test_bad_study_names_the_field(overrides, message):
  with pytest.raises(study_lib.StudyError, match=message):
    study_lib.validate(tiny_study(**overrides), num_devices=8)


def test_good_study_resolves_defaults():
  study = study_lib.validate(tiny_study(), num_devices=8)
  assert study.finetune.methods == ("full",)
  assert study.finetune.train.eval_every == 5 and study.finetune.train.weight_decay == 0.0


def test_eft_defaults_resolve_against_the_study():
  study = study_lib.validate(tiny_study(**{"model.sizes": ("d32l2", "d48l2"), "eft": {"enabled": True}}), 8)
  e = study.eft
  assert (e.task, e.method, e.seed, e.pretrain_steps, e.d_f) == ("qa", "full", 0, 20, (16, 32))
  assert e.pairs == (("d32l2", "d32l2"), ("d32l2", "d48l2"), ("d48l2", "d32l2"), ("d48l2", "d48l2"))
  assert 1.0 in e.betas


def _launch(tmp_path, *args):
  return processes.run([sys.executable, "-m", "launch.local", "--config", os.path.join(ROOT, "configs", "smoke.py"),
                        *args], cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})


@pytest.mark.parametrize("args, message", [
    (("--config.finetune.methods=('full','lora9')",), "finetune.methods[1]='lora9' is not a fine-tuning method"),
    (("--config.eft.betas=()",), "eft.betas=[]; allowed: a non-empty list"),
    (("--config.finetune.methodz=full",),
     "--config.finetune.methodz: 'methodz' is not a field of finetune; allowed: ['d_f', 'methods', 'pack', 'seeds'"),
    (("--config.evall.batch_size=4",), "'evall' is not a field of the study; allowed: ["),
    (("--config.model.block.rotary_fractoin=0.5",), "the config file does not set rotary_fractoin"),
    (("--workdirr=/tmp/x",), "usage error: Unknown command line flag 'workdirr'"),
    (("--config=/nonexistent/study.py",), "invalid --config: cannot load it ([Errno 2] No such file or directory"),
    # A field that the config file leaves to the defaults is overridable: it reaches validation.
    (("--config.finetune.train.schedule=linear",), "finetune.train.schedule='linear'; allowed: 'cosine'"),
])
def test_launcher_rejects_mistakes_in_one_line_before_writing_anything(tmp_path, args, message):
  proc = _launch(tmp_path, "--workdir", str(tmp_path / "w"), *args)
  assert proc.returncode != 0 and message in proc.stderr, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr and not (tmp_path / "w").exists()


def test_launcher_names_a_workdir_it_cannot_create(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("")
  proc = _launch(tmp_path, "--workdir", str(blocker / "w"))
  assert proc.returncode != 0 and f"--workdir {blocker / 'w'}: cannot create it" in proc.stderr
  assert "Traceback" not in proc.stderr
