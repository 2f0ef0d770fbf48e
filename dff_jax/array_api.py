"""One source of array math for NumPy and JAX.

Small pure functions in :mod:`dff_jax.geometry` and :mod:`dff_jax.face_model.model` are written
once against the array namespace of their inputs, so the NumPy data pipeline (which never imports
JAX) and the jitted JAX code share the same conventions and the same formulas. This module itself
never imports JAX: a JAX array announces ``jax.numpy`` through ``__array_namespace__``.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def namespace(*arrays: Any):
  """Returns ``jax.numpy`` if any argument is a JAX array or tracer, else ``numpy``.

  Python scalars and NumPy arrays give ``numpy``.
  """
  for array in arrays:
    get = getattr(array, "__array_namespace__", None)
    if get is not None and not isinstance(array, (np.ndarray, np.generic)):
      return get()
  return np


def einsum(subscripts: str, *operands: Any):
  """``einsum`` in the operands' namespace, at full float32 precision under JAX.

  Geometry matmuls must not silently run in bf16 passes on TPU, so JAX gets
  ``precision="highest"``; NumPy is always exact.
  """
  xp = namespace(*operands)
  if xp is np:
    return np.einsum(subscripts, *operands)
  return xp.einsum(subscripts, *operands, precision="highest")
