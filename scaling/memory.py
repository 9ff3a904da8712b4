"""Per-device memory of a compiled program, as XLA accounts it."""


def memory_of(compiled) -> dict:
  """Per-device memory stats of a compiled program, with their peak."""
  stats = compiled.memory_analysis()
  memory = {k: int(getattr(stats, f"{k}_size_in_bytes")) for k in ("argument", "output", "temp", "alias")}
  memory["peak"] = memory["argument"] + memory["output"] + memory["temp"] - memory["alias"]
  return memory
