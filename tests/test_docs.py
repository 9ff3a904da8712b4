"""The docs' commands run as written: every code block that README.md or a guide in docs/ marks
`<!-- runnable -->` runs, as bash, from a folder with the project's configs and examples; and every
guide is linked from the README."""

import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_BLOCK = re.compile(r"^<!-- runnable -->\n```(?:bash|sh)\n(.*?)^```", re.M | re.S)


def runnable_blocks() -> list[tuple[str, str]]:
  """(where, commands) of every code block marked runnable, `where` as file:line."""
  out = []
  for doc in DOCS:
    text = doc.read_text()
    for m in _BLOCK.finditer(text):
      out.append((f"{doc.relative_to(ROOT)}:{text[: m.start()].count(chr(10)) + 1}", m.group(1)))
  return out


def test_the_docs_mark_commands_to_run():
  where = [w for w, _ in runnable_blocks()]
  assert any(w.startswith("README.md") for w in where) and any(w.startswith("docs/") for w in where)


@pytest.mark.parametrize("where, commands", runnable_blocks(), ids=lambda v: v if ":" in str(v) else "")
def test_a_runnable_block_runs_as_written(tmp_path, where, commands):
  for name in ("configs", "examples"):  # Relative paths as in a checkout; what the commands write stays here.
    (tmp_path / name).symlink_to(ROOT / name)
  env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": f"{pathlib.Path(sys.executable).parent}:{os.environ['PATH']}"}
  proc = subprocess.run(
    ["bash", "-euo", "pipefail", "-c", commands], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
  )
  assert proc.returncode == 0, f"{where}: exit {proc.returncode}\n{proc.stderr[-3000:]}"
  assert proc.stdout.strip(), f"{where} printed nothing"


def test_every_guide_is_linked_from_the_readme():
  readme = (ROOT / "README.md").read_text()
  guides = sorted(p.name for p in (ROOT / "docs").glob("*.md"))
  assert guides and [g for g in guides if f"(docs/{g})" not in readme] == []


def test_no_figure_in_the_docs_is_tagged_with_a_commit():
  # A figure says its device, command and date; the code it ran is in git's history, not in the text.
  tagged = [
    f"{doc.relative_to(ROOT)}: {m[0]}" for doc in DOCS for m in re.finditer(r"\bat [0-9a-f]{7,40}\b", doc.read_text())
  ]
  assert tagged == []
