"""Mesh decimation that keeps original vertex ids (NumPy + a Python loop at set-up only).

The pipeline renders a coarser triangle list over a *subset of the model's own vertices*, so every
vertex id, landmark and coefficient keeps its meaning and the coarse surface deforms with the
model's identity / expression bases exactly like the full one. Correspondences are exact on the
rendered (coarse) surface.

Method: passes of parallel half-edge collapses on the mean shape, shortest edges first. A pass
takes an independent set of collapses ``b -> a`` (no two touch the same one-ring), keeps
protected vertices (mesh boundaries such as the lid and lip borders, landmarks, contour
candidates), requires the link condition (an interior edge's endpoints share exactly two
neighbours) and rejects collapses that would flip or degenerate a triangle. Passes repeat until
the triangle count reaches the target. Runs once per process (about a second for the 32k-triangle
ICT mesh); the result is cached.
"""

from __future__ import annotations

import functools
from typing import Optional

import numpy as np


def _normals(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
  p = vertices[triangles]
  return np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0])


def decimate(vertices: np.ndarray, triangles: np.ndarray, target_triangles: int,
             protected: Optional[np.ndarray] = None, max_passes: int = 40) -> np.ndarray:
  """Coarser triangles over a subset of ``vertices``.

  Args:
    vertices: ``[V, 3]`` positions (e.g. the mean face, mm).
    triangles: ``[T, 3]`` int vertex ids (orientation is preserved).
    target_triangles: stop when at most this many triangles remain (the last pass may stop a
      few triangles above it when collapses are rejected and none are left to try).
    protected: optional ``[P]`` vertex ids that must stay.
    max_passes: upper bound on collapse passes.

  Returns:
    ``[T', 3]`` int32 triangles over the original vertex ids, ``T' <= T``.
  """
  v = np.asarray(vertices, np.float64)
  tris = np.asarray(triangles, np.int64).copy()
  keep = np.zeros(v.shape[0], bool)
  if protected is not None:
    keep[np.asarray(protected, np.int64)] = True
  for _ in range(max_passes):
    if tris.shape[0] <= target_triangles:
      break
    edges = np.concatenate([tris[:, [0, 1]], tris[:, [1, 2]], tris[:, [2, 0]]])
    edges.sort(axis=1)
    unique_edges, counts = np.unique(edges, axis=0, return_counts=True)
    boundary = np.zeros(v.shape[0], bool)
    boundary[unique_edges[counts == 1].ravel()] = True
    boundary[unique_edges[counts > 2].ravel()] = True  # non-manifold: leave alone
    fixed = keep | boundary
    length = np.linalg.norm(v[unique_edges[:, 0]] - v[unique_edges[:, 1]], axis=1)
    neighbours = [set() for _ in range(v.shape[0])]
    for a, b in unique_edges.tolist():
      neighbours[a].add(b)
      neighbours[b].add(a)
    locked = np.zeros(v.shape[0], bool)
    remap = np.arange(v.shape[0])
    budget = tris.shape[0] - target_triangles
    for e in np.argsort(length, kind="stable").tolist():
      if budget <= 0:
        break
      a, b = unique_edges[e]
      if fixed[b]:
        a, b = b, a
      if fixed[b] or locked[a] or locked[b]:
        continue
      if len(neighbours[a] & neighbours[b]) != 2:  # link condition (interior edge)
        continue
      remap[b] = a
      locked[a] = locked[b] = True
      locked[list(neighbours[b])] = True
      locked[list(neighbours[a])] = True
      budget -= 2
    if (remap == np.arange(v.shape[0])).all():
      break
    # Reject collapses that flip or squash a surviving triangle.
    for _ in range(3):
      new = remap[tris]
      degenerate = (new[:, 0] == new[:, 1]) | (new[:, 1] == new[:, 2]) | (new[:, 0] == new[:, 2])
      changed = (new != tris).any(axis=1) & ~degenerate
      old_n = _normals(v, tris[changed])
      new_n = _normals(v, new[changed])
      cos = np.einsum("td,td->t", old_n, new_n) / np.maximum(
          np.linalg.norm(old_n, axis=1) * np.linalg.norm(new_n, axis=1), 1e-18)
      bad = cos < 0.3
      if not bad.any():
        break
      moved = tris[changed][bad].ravel()
      moved = moved[remap[moved] != moved]
      remap[moved] = moved
    new = remap[tris]
    degenerate = (new[:, 0] == new[:, 1]) | (new[:, 1] == new[:, 2]) | (new[:, 0] == new[:, 2])
    tris = new[~degenerate]
  return tris.astype(np.int32)


@functools.lru_cache(maxsize=4)
def _cached(key, vertices_bytes, shape, triangles_bytes, tshape, target, protected_bytes):
  del key
  vertices = np.frombuffer(vertices_bytes, np.float32).reshape(shape)
  triangles = np.frombuffer(triangles_bytes, np.int32).reshape(tshape)
  protected = np.frombuffer(protected_bytes, np.int64)
  return decimate(vertices, triangles, target, protected)


def decimated_triangles(vertices: np.ndarray, triangles: np.ndarray, target_triangles: int,
                        protected: np.ndarray) -> np.ndarray:
  """Cached :func:`decimate` (per process, keyed by the mesh contents)."""
  v = np.ascontiguousarray(vertices, np.float32)
  t = np.ascontiguousarray(triangles, np.int32)
  p = np.ascontiguousarray(np.unique(protected), np.int64)
  return _cached("decimate", v.tobytes(), v.shape, t.tobytes(), t.shape, int(target_triangles),
                 p.tobytes())
