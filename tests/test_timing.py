"""A study's time breakdown: phases nest without counting a second twice, and compilation is apart."""

import time

import jax
import jax.numpy as jnp

from scaling import timing


def test_phases_nest_and_compilation_counts_apart():
  before, t0 = timing.totals(), time.perf_counter()
  with timing.phase("outer-test"):
    time.sleep(0.05)
    with timing.phase("inner-test"):
      time.sleep(0.05)
      jax.jit(lambda x: jnp.sin(x) * 3.0 + x.shape[0])(jnp.ones(17 + int(time.time()) % 5))  # A new program.
  elapsed, after = time.perf_counter() - t0, timing.totals()
  outer, inner = after["outer-test"] - before.get("outer-test", 0), after["inner-test"] - before.get("inner-test", 0)
  compiled = after["compilation"] - before.get("compilation", 0)
  assert compiled > 0
  assert outer >= 0.05 and inner >= 0.05
  assert abs(outer + inner + compiled - elapsed) < 0.01  # Each second once: the inner phase's is not the outer's.
  line = timing.summary(1.0)
  assert line.startswith("time: ") and "outer-test" in line and "other" in line and line.endswith("total 1.0s")
