"""What every launcher command shares: flag parsing that answers a user's mistakes in one line, and
Ctrl-C answered in one line too."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import sys
import traceback
from collections.abc import Callable, Iterator

from absl import flags

from scaling import study as study_lib


def flags_parser(usage: str) -> Callable[[list[str]], list[str]]:
  """absl's flag parsing for `app.run(..., flags_parser=...)`: a misspelt `--config.` override, an
  unknown flag or a bad value exits with one line naming it, instead of a traceback."""

  def parse(argv: list[str]) -> list[str]:
    try:
      for arg in argv[1:]:
        if arg.startswith("--config."):
          study_lib.check_override(arg[len("--config.") :].split("=", 1)[0])
      rest = flags.FLAGS(argv)
      if "config" in flags.FLAGS and flags.FLAGS["config"].present:
        hasattr(flags.FLAGS.config, "to_dict")  # A file that failed to load raises only when first used.
      return rest
    except OSError as e:  # The --config file is missing or does not load.
      lines = [line.strip() for line in str(e).splitlines() if line.strip()]
      sys.exit(f"invalid --config: cannot load it ({lines[-1] if lines else e})\nusage: {usage}")
    except study_lib.StudyError as e:
      sys.exit(f"invalid study: {e}")
    except flags.Error as e:
      if "Traceback" in str(e):  # get_config() raised, and ml_collections wrapped its traceback.
        sys.exit(f"{_config_error(str(e), argv)}\nusage: {usage}")
      sys.exit(f"usage error: {e}\nusage: {usage}")
    except (AttributeError, KeyError) as e:  # ml_collections: a key that the config file does not set.
      if _config_path(argv) in _frames(_text(e)):  # Or the config file's own code raised it.
        sys.exit(f"{_config_error(_text(e), argv)}\nusage: {usage}")
      detail = " ".join(str(e.args[0] if e.args else e).split()).strip("'\" ")
      sys.exit(
        f"invalid override: the config file does not set {detail}; the free-form groups "
        "(model.block, mesh.shape) take only keys that their config file sets"
      )
    except Exception as e:  # A Python error in the config file (SyntaxError, NameError, ...).
      sys.exit(f"{_config_error(_text(e), argv)}\nusage: {usage}")

  return parse


_FRAME = re.compile(r'File "([^"]+)", line (\d+)')


def _text(error: BaseException) -> str:
  return "".join(traceback.format_exception(error))


def _frames(text: str) -> list[str]:
  """The files of a traceback's frames, as absolute paths."""
  return [os.path.abspath(file) for file, _ in _FRAME.findall(text)]


def _config_path(argv: list[str]) -> str | None:
  """The absolute path of the --config file in the command line (without its `:argument`)."""
  for i, arg in enumerate(argv):
    value = arg[len("--config=") :] if arg.startswith("--config=") else argv[i + 1] if arg == "--config" else None
    if value:
      return os.path.abspath(value.split(":")[0])
  return None


def _config_error(text: str, argv: list[str]) -> str:
  """One line for an error raised while the config file loaded (a traceback's text): the error, at the
  config file's line where it is in the traceback, else at the last frame's."""
  frames = [(os.path.abspath(file), line) for file, line in _FRAME.findall(text)]
  mine = [f for f in frames if f[0] == _config_path(argv)] or frames
  where = f"{mine[-1][0]}, line {mine[-1][1]}: " if mine else ""
  return f"invalid --config: {where}{text.strip().splitlines()[-1]}"


@contextlib.contextmanager
def resumable(module: str) -> Iterator[None]:
  """Turns Ctrl-C into one line saying that the same command (`python -m module ...`) resumes;
  exits 130, as a shell does for an interrupted command."""
  if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:  # Ignored (a background job): left so.
    yield
    return
  command = shlex.join(["python", "-m", module, *sys.argv[1:]])
  previous = signal.signal(signal.SIGINT, lambda signum, frame: _exit_interrupted(command))
  try:
    yield
  finally:
    signal.signal(signal.SIGINT, previous)


def _exit_interrupted(command: str) -> None:
  """Ends the process at once with the line that resumable promises (a SIGINT handler)."""
  # Not by raising KeyboardInterrupt: Python drops an exception raised in a gc callback or a
  # __del__ (JAX runs one at every collection), so Ctrl-C would be lost there, and orbax's writer
  # threads, left running by an interrupted save, fail with tracebacks at interpreter shutdown.
  # Ending at once leaves what a kill (a preemption) leaves, and the runs resume from that: orbax
  # finalises checkpoints by renaming a temporary folder, result.json is written by a rename, and
  # the metrics log is cut back to the checkpoint.
  for stream in (sys.stdout, sys.stderr):
    with contextlib.suppress(OSError, ValueError, RuntimeError):  # RuntimeError: the signal came amid a write.
      stream.flush()
  os.write(2, f"\ninterrupted; the same command resumes: {command}\n".encode())  # Not sys.stderr: as above.
  os._exit(130)
