"""The test helper `processes.run` answers as `subprocess.run` of the same command does."""

import os
import subprocess
import sys

import processes
import pytest

MODULES = {
  "says_and_exits": "import sys\nprint('out')\nsys.exit('bad input: one line')\n",
  "raises": "raise ValueError('boom')\n",
  "reports": "import os, sys\nprint(os.environ['PROBE'], os.getcwd(), sys.argv[1:], __name__)\nsys.exit(3)\n",
  "exit_handler": "import atexit\natexit.register(print, 'bye')\nprint('hi')\n",
}


@pytest.mark.parametrize("name", MODULES)
def test_a_forked_run_answers_as_a_fresh_process(tmp_path, name):
  (tmp_path / f"{name}.py").write_text(MODULES[name])
  env = {**os.environ, "PYTHONPATH": str(tmp_path), "PROBE": "probe"}
  command = [sys.executable, "-m", name, "a", "b c"]
  forked = processes.run(command, cwd=str(tmp_path), env=env)
  fresh = subprocess.run(command, cwd=str(tmp_path), env=env, capture_output=True, text=True)
  assert (forked.returncode, forked.stdout) == (fresh.returncode, fresh.stdout)
  assert forked.stderr.splitlines()[-1:] == fresh.stderr.splitlines()[-1:]  # Tracebacks differ in runpy's frames.
  assert ("Traceback" in forked.stderr) == ("Traceback" in fresh.stderr)


def test_commands_other_than_python_m_are_refused():
  with pytest.raises(ValueError, match="the server runs only"):
    processes.run(["bash", "-c", "true"], cwd=".", env=dict(os.environ))
