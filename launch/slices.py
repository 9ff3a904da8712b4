"""Cloud TPU slices by name: their libtpu topology and HBM, and whether a study's mesh fills one.

Light on purpose (no model or data imports): the pod launchers validate against it before
anything is compiled or submitted.
"""

from __future__ import annotations

import math
import re

from scaling import mesh as mesh_lib

# Accelerator name -> (libtpu's name, TensorCores per chip counted in slice names, torus dims, HBM GiB).
TPUS = {"v4": ("v4", 2, 3, 32), "v5p": ("v5", 2, 3, 95), "v5e": ("v5e", 1, 2, 16), "v6e": ("v6e", 1, 2, 32)}


class CheckError(ValueError):
  """A target or study that cannot be checked; the message names the value and what is allowed."""


def tpu_topology(name: str) -> tuple[str, int]:
  """libtpu's topology name and HBM GiB of a slice name (v5p-32 -> 'v5:2x2x4', 95), or of a
  topology name itself (v5e:4x4, v5p:2x2x4)."""
  named = re.fullmatch(r"(v4|v5p|v5|v5e|v6e):(\d+(?:x\d+)*)", name)
  if named:
    kind = "v5p" if named.group(1) == "v5" else named.group(1)
    lib_name, _, dims, hbm = TPUS[kind]
    shape = [int(d) for d in named.group(2).split("x")]
    if len(shape) != dims or min(shape) < 1:
      raise CheckError(
        f"--topology={name!r}: a {kind} topology has {dims} dimensions of at least 1, such as "
        f"{kind}:{'x'.join(['2'] * dims)}"
      )
    return f"{lib_name}:{named.group(2)}", hbm
  match = re.fullmatch(r"(v4|v5p|v5e|v6e)-(\d+)", name)
  if not match:
    raise CheckError(
      f"--topology={name!r} is not a TPU slice; allowed: v4-N, v5p-N, v5e-N, v6e-N "
      "(N a power of 2, as Cloud TPU names slices), or a topology such as v5e:4x4 or v5p:2x2x4"
    )
  kind, count = match.group(1), int(match.group(2))
  lib_name, cores, dims, hbm = TPUS[kind]
  chips = count // cores
  if chips < 1 or chips & (chips - 1) or count % cores:
    raise CheckError(
      f"--topology={name!r}: {count} is not a {kind} slice size; allowed: powers of 2 of at least {cores}"
    )
  shape = [1] * dims
  for i in range(int(math.log2(chips))):  # Halve the torus as evenly as the chips allow.
    shape[i % dims] *= 2
  shape.sort(key=lambda d: (d == 1, d))  # As Cloud TPU writes them: 2x2x4, 2x2x1.
  return f"{lib_name}:{'x'.join(map(str, shape))}", hbm


def require_full_mesh(study, num_devices: int, target_name: str) -> None:
  """Raises CheckError unless the (validated) study's mesh uses every device of the target."""
  shape = mesh_lib.resolve_shape(study.mesh.shape.to_dict(), num_devices)
  if math.prod(shape) != num_devices:
    raise CheckError(
      f"mesh.shape={study.mesh.shape.to_dict()} uses {math.prod(shape)} of the {num_devices} "
      f"devices of {target_name}; allowed: axes whose product is {num_devices} (or one -1)"
    )
