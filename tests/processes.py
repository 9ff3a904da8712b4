"""Command-line runs for tests, each in a fresh process forked from a server that has already
imported the project and its libraries: a test of a command then costs the command's own work, not
the 2-3 s that every `python -m` spends importing JAX, Flax, orbax and TFDS.

    processes.run([sys.executable, "-m", "launch.local", "--config", path], cwd=root, env=env)

Each test process starts its own server on first use; it serves one run at a time and stops with the
test process. A run's child takes the given environment, working directory and argv as
`python -m MODULE ARGS` would, then runs MODULE as __main__. Its exit status, stdout and stderr (in
a CompletedProcess, as `subprocess.run(..., capture_output=True, text=True)` gives them) are what
that command's would be, and its exit handlers run; only the teardown of every module is skipped.
The server imports JAX but never starts a backend, so a child's JAX reads XLA_FLAGS from the
child's environment; JAX_* variables, which JAX reads at import, must be the server's. Runs that
are killed, or that must not share the server's hash seed, use subprocess.
"""

from __future__ import annotations

import atexit
import importlib
import json
import os
import runpy
import subprocess
import sys
import tempfile
import threading
import traceback

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What the commands import, less the modules that define absl flags at import (launch.local,
# launch.check, ...): run again as __main__ they would define them twice.
PRELOAD = (
  "jax",
  "flax.nnx",
  "optax",
  "orbax.checkpoint",
  "tensorflow_datasets",
  "grain",
  "ml_collections",
  "pandas",
  "matplotlib.pyplot",
  "launch.cli",
  "launch.plan",
  "scaling.study",
  "scaling.run",
  "analysis.fit",
  "scaling.metric_writers",
)

_server: subprocess.Popen | None = None
_lock = threading.Lock()


def _jax_env(env: dict) -> dict:
  return {k: v for k, v in env.items() if k.startswith("JAX_")}


def _start() -> subprocess.Popen:
  env = {**os.environ, "PYTHONPATH": os.pathsep.join([REPO, os.path.join(REPO, "tests")])}
  server = subprocess.Popen(
    [sys.executable, "-c", "import processes; processes.serve()"],
    cwd=REPO,
    env=env,
    stdin=subprocess.PIPE,
    stdout=subprocess.PIPE,
    text=True,
  )
  atexit.register(_stop, server)
  return server


def _stop(server: subprocess.Popen) -> None:
  server.stdin.close()  # The server's loop ends with its input.
  try:
    server.wait(timeout=10)
  except subprocess.TimeoutExpired:
    server.kill()
    server.wait()
  server.stdout.close()


def run(command: list[str], *, cwd: str, env: dict) -> subprocess.CompletedProcess:
  """`command`, a `[sys.executable, "-m", MODULE, *ARGS]`, in cwd with env, forked from the server."""
  global _server
  if command[:2] != [sys.executable, "-m"]:
    raise ValueError(f"{command[:3]}: the server runs only `{sys.executable} -m MODULE ...`")
  module, args = command[2], command[3:]
  if _jax_env(env) != _jax_env(dict(os.environ)):
    raise ValueError(f"JAX_* variables differ from the server's: {_jax_env(env)}; run this one with subprocess")
  with _lock, tempfile.TemporaryDirectory() as tmp:
    if _server is None or _server.poll() is not None:
      _server = _start()
    out, err = os.path.join(tmp, "stdout"), os.path.join(tmp, "stderr")
    request = {"module": module, "args": [str(a) for a in args], "cwd": str(cwd), "env": env, "out": out, "err": err}
    _server.stdin.write(json.dumps(request) + "\n")
    _server.stdin.flush()
    reply = _server.stdout.readline()
    if not reply:
      raise RuntimeError(f"the process server stopped (exit {_server.wait()})")
    with open(out) as f_out, open(err) as f_err:
      return subprocess.CompletedProcess(
        [sys.executable, "-m", module, *request["args"]], json.loads(reply), f_out.read(), f_err.read()
      )


def _child(request: dict) -> int:
  """Becomes `python -m MODULE ARGS`; returns its exit status."""
  try:
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    for fd, path, flags in (
      (0, os.devnull, os.O_RDONLY),
      (1, request["out"], os.O_WRONLY | os.O_CREAT),
      (2, request["err"], os.O_WRONLY | os.O_CREAT),
    ):
      os.dup2(os.open(path, flags), fd)
    sys.stdin = open(0, closefd=False)
    sys.stdout = open(1, "w", closefd=False)
    sys.stderr = open(2, "w", closefd=False)
    sys.path[0] = os.getcwd()  # As `python -m` sets it, then PYTHONPATH.
    sys.path[1:1] = [p for p in request["env"].get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path]
    sys.argv = [request["module"], *request["args"]]
    sys.modules.pop(request["module"], None)  # Run as __main__, as `python -m` does, not as the import.
    runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
    return 0
  except SystemExit as e:  # As the interpreter reports it: a status, or a message and 1.
    if e.code is None or isinstance(e.code, int):
      return e.code or 0
    print(e.code, file=sys.stderr)
    return 1
  except BaseException:  # noqa: BLE001 - a traceback on stderr and status 1, as Python would.
    traceback.print_exc()
    return 1


def serve() -> None:
  """The server's loop: one JSON request per stdin line, answered with the child's exit status."""
  replies = os.fdopen(os.dup(1), "w")
  os.dup2(2, 1)  # Whatever else writes to stdout cannot garble the replies.
  for name in PRELOAD:
    importlib.import_module(name)
  for line in sys.stdin:
    request = json.loads(line)
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:  # The child ends as an interpreter does, less the teardown of every module (0.8 s).
      replies.close()
      code = _child(request)
      atexit._run_exitfuncs()
      sys.stdout.flush()
      sys.stderr.flush()
      os._exit(code)
    _, status = os.waitpid(pid, 0)
    replies.write(json.dumps(os.waitstatus_to_exitcode(status)) + "\n")
    replies.flush()
