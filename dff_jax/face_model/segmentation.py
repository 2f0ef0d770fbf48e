"""Random mesh segmentations into patches, for the per-pixel patch-classification loss (NumPy).

Recipe of Wei et al., "Dense Human Body Correspondences Using Convolutional Networks" (CVPR 2016)
as used by the DFF code: the mesh is split into ``P`` patches in each of ``S`` different random
segmentations; a pixel's label in segmentation ``s`` is the patch of the surface point it shows.

Each segmentation: farthest-point sampling (Euclidean, over the mean mesh) of ``P`` seeds from a
random half of the vertices, started at a random vertex; then a graph Voronoi diagram: every
vertex takes the seed nearest along mesh edges (multi-source Dijkstra, edge length in mm, via
``scipy.sparse.csgraph.dijkstra(min_only=True)``). Mesh components that got no seed (can happen
for small separate shells) take the Euclidean-nearest seed.

Parts: all vertices are labelled. The face, head and neck surface (one connected component in
ICT, with the mouth socket attached inside the lips) gets most seeds; each ICT eyeball is two
separate shells (sclera and cornea) that get seeds of their own when farthest-point sampling
reaches them, else their vertices join the Euclidean-nearest patch (so a patch can cover an eyelid
and part of the eyeball under it). Seeds are spread by Euclidean distance, so patches have
roughly equal area, not equal vertex counts.
Patch ids are in ``[0, P)``; every segmentation has exactly ``P`` non-empty patches.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse
from scipy.sparse import csgraph
from scipy.spatial import cKDTree

from dff_jax.face_model.model import FaceModel


def mesh_edge_graph(vertices: np.ndarray, triangles: np.ndarray) -> scipy.sparse.csr_matrix:
  """Symmetric sparse ``[V, V]`` graph of triangle edges weighted by their length (mm)."""
  t = np.asarray(triangles, np.int64)
  edges = np.concatenate([t[:, [0, 1]], t[:, [1, 2]], t[:, [2, 0]]], axis=0)
  edges = np.unique(np.sort(edges, axis=1), axis=0)
  v = np.asarray(vertices, np.float64)
  length = np.maximum(np.linalg.norm(v[edges[:, 0]] - v[edges[:, 1]], axis=1), 1e-6)
  n = v.shape[0]
  graph = scipy.sparse.coo_matrix((length, (edges[:, 0], edges[:, 1])), shape=(n, n)).tocsr()
  return (graph + graph.T).tocsr()


def farthest_point_seeds(points: np.ndarray, num_seeds: int, rng: np.random.Generator,
                         candidate_fraction: float = 0.5) -> np.ndarray:
  """``[num_seeds]`` int vertex ids by Euclidean farthest-point sampling over a random subset of
  ``points [V, 3]`` (the subset and the start vertex make each call different)."""
  num_points = points.shape[0]
  if num_seeds > num_points:
    raise ValueError(f"cannot place {num_seeds} patches on a mesh of {num_points} vertices")
  num_candidates = max(num_seeds, int(candidate_fraction * num_points))
  candidates = rng.choice(num_points, size=num_candidates, replace=False)
  cand = points[candidates]
  seeds = np.empty(num_seeds, np.int64)
  seeds[0] = rng.integers(num_candidates)
  distance = np.sum((cand - cand[seeds[0]]) ** 2, axis=1)
  for k in range(1, num_seeds):
    seeds[k] = int(np.argmax(distance))
    distance = np.minimum(distance, np.sum((cand - cand[seeds[k]]) ** 2, axis=1))
  return candidates[seeds]


def random_segmentations(model: FaceModel, num_segmentations: int, num_patches: int,
                         seed: int) -> np.ndarray:
  """Random patch segmentations of the model's mean mesh (see the module docstring).

  Args:
    model: a NumPy face model.
    num_segmentations: S.
    num_patches: P patches per segmentation (<= number of vertices).
    seed: the result is a pure function of ``(model, S, P, seed)``; segmentation ``s`` uses the
      generator seeded with ``(seed, s)``, so it does not depend on S.

  Returns:
    ``[S, V]`` int32 patch id per vertex, in ``[0, P)``.
  """
  if num_segmentations < 0 or num_patches < 1:
    raise ValueError(f"need num_segmentations >= 0 and num_patches >= 1, got "
                     f"{num_segmentations}, {num_patches}")
  vertices = np.asarray(model.mean_vertices, np.float64)
  graph = mesh_edge_graph(vertices, model.triangles)
  out = np.empty((num_segmentations, vertices.shape[0]), np.int32)
  for s in range(num_segmentations):
    rng = np.random.default_rng((seed, s))
    seeds = farthest_point_seeds(vertices, num_patches, rng)
    _, _, sources = csgraph.dijkstra(graph, directed=False, indices=seeds,
                                     return_predecessors=True, min_only=True)
    patch_of_vertex = np.full(vertices.shape[0], -1, np.int64)
    reached = sources >= 0
    patch_of_seed = np.full(vertices.shape[0], -1, np.int64)
    patch_of_seed[seeds] = np.arange(num_patches)
    patch_of_vertex[reached] = patch_of_seed[sources[reached]]
    if not reached.all():
      nearest = cKDTree(vertices[seeds]).query(vertices[~reached])[1]
      patch_of_vertex[~reached] = nearest
    out[s] = patch_of_vertex
  return out
