"""What every launcher command shares: flag parsing that answers a user's mistakes in one line."""

from __future__ import annotations

import sys
from collections.abc import Callable

from absl import flags

from scaling import study as study_lib


def flags_parser(usage: str) -> Callable[[list[str]], list[str]]:
  """absl's flag parsing for `app.run(..., flags_parser=...)`: a misspelt `--config.` override, an
  unknown flag or a bad value exits with one line naming it, instead of a traceback."""

  def parse(argv: list[str]) -> list[str]:
    try:
      for arg in argv[1:]:
        if arg.startswith("--config."):
          study_lib.check_override(arg[len("--config."):].split("=", 1)[0])
      return flags.FLAGS(argv)
    except study_lib.StudyError as e:
      sys.exit(f"invalid study: {e}")
    except flags.Error as e:
      sys.exit(f"usage error: {e}\nusage: {usage}")
    except (AttributeError, KeyError) as e:  # ml_collections: a key that the config file does not set.
      detail = " ".join(str(e.args[0] if e.args else e).split()).strip("'\" ")
      sys.exit(f"invalid override: the config file does not set {detail}; the free-form groups "
               "(model.block, mesh.shape) take only keys that their config file sets")

  return parse
