"""Tests for dff_jax.face_model.segmentation: random patch segmentations of the mesh."""

import numpy as np
import pytest
from scipy.sparse import csgraph

from dff_jax.face_model import loaders, segmentation


@pytest.fixture(scope="module")
def model():
  return loaders.default_face_model()


def test_shape_count_and_determinism(model):
  a = segmentation.random_segmentations(model, 3, 40, seed=7)
  assert a.shape == (3, model.num_vertices) and a.dtype == np.int32
  for row in a:
    np.testing.assert_array_equal(np.unique(row), np.arange(40))   # exactly P non-empty patches
  np.testing.assert_array_equal(segmentation.random_segmentations(model, 3, 40, seed=7), a)
  # Segmentation s depends on (seed, s) only, not on how many are asked for.
  np.testing.assert_array_equal(segmentation.random_segmentations(model, 2, 40, seed=7), a[:2])
  b = segmentation.random_segmentations(model, 1, 40, seed=8)
  assert np.mean(b[0] != a[0]) > 0.3
  assert np.mean(a[1] != a[0]) > 0.3                                 # segmentations differ


def test_patches_are_connected_and_compact(model):
  labels = segmentation.random_segmentations(model, 1, 60, seed=0)[0]
  graph = segmentation.mesh_edge_graph(model.mean_vertices, model.triangles)
  # Patches are connected along mesh edges (graph Voronoi cells) on the main skin surface (the
  # eyeball shells are separate components and may join the Euclidean-nearest patch).
  _, component = csgraph.connected_components(graph, directed=False)
  skin = component == np.argmax(np.bincount(component))
  for patch in range(0, 60, 7):
    ids = np.flatnonzero((labels == patch) & skin)
    num, _ = csgraph.connected_components(graph[ids][:, ids], directed=False)
    assert num == 1, f"patch {patch} has {num} components"
  # Farthest-point seeds spread patches: no patch spans more than ~half the head.
  v = model.mean_vertices
  extents = [np.ptp(v[labels == p], axis=0).max() for p in range(60)]
  assert max(extents) < 0.5 * np.ptp(v, axis=0).max()


def test_bad_arguments(model):
  with pytest.raises(ValueError, match="num_patches"):
    segmentation.random_segmentations(model, 1, 0, seed=0)
  with pytest.raises(ValueError, match="cannot place"):
    segmentation.random_segmentations(model, 1, model.num_vertices + 1, seed=0)
