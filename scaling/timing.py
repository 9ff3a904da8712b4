"""Where a process's time goes: named phases, with JAX's compilation counted apart.

    with timing.phase("training"):
      ...
    print(timing.summary(total_seconds))

Phases may nest; each second counts once, in the innermost open phase, and the seconds JAX spends
tracing, lowering and compiling (or reading compiled programs from the cache) count as
"compilation" wherever they happen.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time

import jax

_COMPILE_EVENTS = (
  "/jax/core/compile/jaxpr_trace_duration",
  "/jax/core/compile/jaxpr_to_mlir_module_duration",
  "/jax/core/compile/backend_compile_duration",
)
_totals: collections.Counter = collections.Counter()
_open: list[list[float]] = []  # Per open phase: seconds spent inside it but counted elsewhere.
_lock = threading.Lock()


def _on_duration(event: str, duration: float, **_) -> None:
  if event in _COMPILE_EVENTS:
    with _lock:
      _totals["compilation"] += duration
      if _open:
        _open[-1][0] += duration


jax.monitoring.register_event_duration_secs_listener(_on_duration)


@contextlib.contextmanager
def phase(name: str):
  """Counts the time inside the block, less compilation and inner phases, as `name`."""
  frame = [0.0]
  _open.append(frame)
  t0 = time.perf_counter()
  try:
    yield
  finally:
    elapsed = time.perf_counter() - t0
    _open.pop()
    with _lock:
      _totals[name] += max(elapsed - frame[0], 0.0)
      if _open:
        _open[-1][0] += elapsed


def totals() -> dict[str, float]:
  """Seconds per phase so far."""
  with _lock:
    return dict(_totals)


def summary(total: float, phases: dict[str, float] | None = None) -> str:
  """One line: each phase's seconds (by default, `totals()`) and share of `total`, the rest as "other"."""
  parts = sorted((totals() if phases is None else phases).items(), key=lambda kv: -kv[1])
  parts.append(("other", max(total - sum(v for _, v in parts), 0.0)))
  return (
    "time: "
    + ", ".join(f"{k} {v:.1f}s ({100 * v / max(total, 1e-9):.0f}%)" for k, v in parts)
    + f"; total {total:.1f}s"
  )
