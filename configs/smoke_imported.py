"""The smoke study over its own models, exported as Hugging Face folders and imported: the same bases
and fine-tunes, read from folders, and the same EFT grid; nothing is trained.

    python -m scaling.export --workdir runs/smoke --out runs/smoke_models
    python -m launch.local --config configs/smoke_imported.py:runs/smoke_models --workdir runs/smoke_imported

Every imported fine-tune stands in for the grid cell it was trained as (its base, task, method, D_f
and seed), so the fine-tuning grid is all imported, and the EFT runs' metrics equal the smoke
study's (tests/test_kinds_finetune_checkpoint.py checks this at a smaller scale).
"""

import ml_collections

from configs import smoke
from scaling import export, study


def get_config(models: str = "runs/smoke_models") -> ml_collections.ConfigDict:
  c = smoke.get_config().to_dict()
  entries = export.read_entries(models)  # model (sizes, block, checkpoints), world and data.tokenizer.
  c.update(name="smoke_imported", model=entries["model"], world=entries["world"], data={**c["data"], **entries["data"]})
  # The smoke study's EFT pairs, by the names of the imported bases: pt-d32l2-1200 for d32l2.
  named = {ck["name"].split("-")[1]: ck["name"] for ck in entries["model"]["checkpoints"] if ck["name"].count("-") == 2}
  c["eft"]["pairs"] = tuple((named[n1], named[n2]) for n1, n2 in c["eft"]["pairs"])
  return study.resolve(c)
