"""Rasteriser: coverage, barycentrics, depth, culling, occlusion and exact point queries on
hand-built meshes with known answers."""

import numpy as np
import pytest

from dff_jax import geometry
from data_pipeline import rasterizer
from data_pipeline.validate import brute_force_front_depth


def pixel_centres(h, w):
  jj, ii = np.meshgrid(np.arange(w), np.arange(h))
  return jj + 0.5, ii + 0.5


def test_single_triangle_coverage_barycentrics_depth():
  # Image frame (y down): (1,1) -> (1,9) -> (9,1) is clockwise on screen = front-facing.
  xy = np.array([[1.0, 1.0], [1.0, 9.0], [9.0, 1.0]])
  z = 2.0 * xy[:, 0] + 3.0 * xy[:, 1]
  screen = np.concatenate([xy, z[:, None]], axis=1)
  r = rasterizer.rasterize(screen, np.array([[0, 1, 2]]), 12, 12)
  x, y = pixel_centres(12, 12)
  expected = (x >= 1) & (y >= 1) & (x + y <= 10)
  np.testing.assert_array_equal(r.triangle_ids >= 0, expected)
  b = r.barycentrics[expected].astype(np.float64)
  np.testing.assert_allclose(b.sum(axis=1), 1.0, atol=1e-6)
  np.testing.assert_allclose(b @ xy, np.stack([x[expected], y[expected]], 1), atol=1e-5)
  np.testing.assert_allclose(r.depth[expected], 2 * x[expected] + 3 * y[expected], rtol=1e-6)
  assert np.all(np.isneginf(r.depth[~expected]))
  assert r.triangle_ids.dtype == np.int32 and r.barycentrics.dtype == np.float32


def test_back_facing_triangle_is_culled():
  screen = np.array([[1.0, 1.0, 0.0], [9.0, 1.0, 0.0], [1.0, 9.0, 0.0]])  # counter-clockwise
  r = rasterizer.rasterize(screen, np.array([[0, 1, 2]]), 12, 12)
  assert (r.triangle_ids < 0).all() and not r.front_facing[0]
  both = rasterizer.rasterize(screen, np.array([[0, 1, 2]]), 12, 12, cull_backfaces=False)
  assert (both.triangle_ids >= 0).sum() > 20


def test_nearer_triangle_wins_in_either_order():
  back = [[0.0, 0.0, 1.0], [0.0, 16.0, 1.0], [16.0, 0.0, 1.0]]
  front = [[4.0, 4.0, 5.0], [4.0, 12.0, 5.0], [12.0, 4.0, 5.0]]
  for order in ([0, 1], [1, 0]):
    pts = np.array(back + front)
    tris = np.array([[0, 1, 2], [3, 4, 5]])[order]
    r = rasterizer.rasterize(pts, tris, 16, 16)
    x, y = pixel_centres(16, 16)
    in_front = (x >= 4) & (y >= 4) & (x + y <= 16)
    front_id = order.index(1)
    assert (r.triangle_ids[in_front] == front_id).all()
    assert (r.depth[in_front] == 5.0).all()
    only_back = (x + y <= 16) & ~in_front
    assert (r.triangle_ids[only_back] == 1 - front_id).all()
    # Exact queries: a point on the back triangle is hidden where the front one covers it.
    depth, tri, bary = rasterizer.front_surface_at(r, np.array([[5.1, 5.2], [1.3, 2.7], [20, 1]]))
    assert tri[0] == front_id and depth[0] == pytest.approx(5.0)
    assert tri[1] == 1 - front_id and depth[1] == pytest.approx(1.0)
    assert tri[2] == -1 and np.isneginf(depth[2])
    np.testing.assert_allclose(bary.sum(axis=1)[:2], 1.0)


def test_sub_pixel_occluder_is_found_by_exact_query():
  # A sliver that covers no pixel centre still hides the surface behind it at exact points.
  pts = np.array([[0.0, 0.0, 0.0], [0.0, 8.0, 0.0], [8.0, 0.0, 0.0],
                  [2.1, 2.1, 3.0], [2.1, 2.4, 3.0], [2.4, 2.1, 3.0]])
  r = rasterizer.rasterize(pts, np.array([[0, 1, 2], [3, 4, 5]]), 8, 8)
  assert (r.triangle_ids == 1).sum() == 0  # no pixel centre inside the sliver
  depth, tri, _ = rasterizer.front_surface_at(r, np.array([[2.15, 2.15], [2.6, 2.6]]))
  assert tri.tolist() == [1, 0] and depth[0] == pytest.approx(3.0)


def cube_mesh(half=10.0):
  """A cube centred at the origin, triangles counter-clockwise seen from outside."""
  v = np.array([[x, y, z] for x in (-half, half) for y in (-half, half) for z in (-half, half)])
  quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
  tris = []
  for a, b, c, d in quads:
    tris += [(a, b, c), (a, c, d)]
  tris = np.array(tris)
  # Orient outwards.
  p = v[tris]
  n = np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0])
  flip = np.einsum("td,td->t", n, p.mean(axis=1)) < 0
  tris[flip] = tris[flip][:, [0, 2, 1]]
  return v.astype(np.float64), tris


def project(v, yaw, pitch, size=64, scale=2.0):
  R = geometry.euler_to_matrix(pitch, yaw, 0.0)
  xy = geometry.weak_perspective_project(v, scale, R, np.array([size / 2, size / 2]))
  return np.concatenate([xy, (v @ R[2])[:, None]], axis=1)


def test_cube_visible_faces_and_front_depth_match_brute_force():
  v, tris = cube_mesh()
  screen = project(v, yaw=0.5, pitch=0.3)
  r = rasterizer.rasterize(screen, tris, 64, 64)
  assert r.front_facing.sum() == 6  # three faces of the cube, two triangles each
  # Silhouette area of a cube = |projected area| of the three visible faces.
  p = screen[tris[r.front_facing]]
  area = 0.5 * np.abs(np.cross(p[:, 1, :2] - p[:, 0, :2], p[:, 2, :2] - p[:, 0, :2])).sum()
  assert abs((r.triangle_ids >= 0).sum() - area) < 0.08 * area
  q = np.random.default_rng(0).uniform(0, 64, size=(500, 2))
  depth, _, _ = rasterizer.front_surface_at(r, q)
  np.testing.assert_allclose(depth, brute_force_front_depth(screen, tris, q), atol=1e-9)


def test_cube_correspondence_between_two_views_is_exact():
  v, tris = cube_mesh()
  a, b = project(v, 0.4, 0.2), project(v, -0.3, 0.25)
  ra, rb = rasterizer.rasterize(a, tris, 64, 64), rasterizer.rasterize(b, tris, 64, 64)
  q = np.random.default_rng(1).uniform(0, 64, size=(300, 2))
  _, tri, bary = rasterizer.front_surface_at(ra, q)
  found = tri >= 0
  surface = np.einsum("nv,nvd->nd", bary[found], v[tris[tri[found]]])  # model space
  # Weak perspective is affine: re-projecting the 3D point gives the query point back ...
  np.testing.assert_allclose(np.einsum("nv,nvd->nd", bary[found], a[tris[tri[found]]])[:, :2],
                             q[found], atol=1e-9)
  # ... and its position in view B is the projection of the same 3D point there.
  R_b = geometry.euler_to_matrix(0.25, -0.3, 0.0)
  expected_b = geometry.weak_perspective_project(surface, 2.0, R_b, np.array([32.0, 32.0]))
  in_b = np.einsum("nv,nvd->nd", bary[found], b[tris[tri[found]]])
  np.testing.assert_allclose(in_b[:, :2], expected_b, atol=1e-9)
  # Points on faces visible in both views (front / top) are front-most in B; side faces not.
  depth_b, _, _ = rasterizer.front_surface_at(rb, in_b[:, :2])
  visible_b = rb.front_facing[tri[found]] & (depth_b <= in_b[:, 2] + 1e-6)
  normals_z_b = (v[tris[tri[found]]].mean(axis=1) @ geometry.euler_to_matrix(0.25, -0.3, 0.0)[2])
  assert visible_b.any() and (~visible_b).any()
  assert (normals_z_b[visible_b] > 0).all()


def _brute_force_surface(screen, triangles, points, cull_backfaces, height, width):
  """The definition, pair by pair: for each point inside the image ([0, W] x [0, H]) every
  triangle with |signed area| > 1e-12 (and negative area, i.e. front-facing, when culling)
  whose barycentrics there are all >= 0; the one of largest interpolated depth wins.
  Returns (triangle id [N] (-1: none), depth [N] (-inf), barycentrics [N, 3])."""
  p = np.asarray(screen, np.float64)[triangles]  # [T, 3 corners, 3]

  def edge(a, b, q):
    return (b[..., 0] - a[..., 0]) * (q[..., 1] - a[..., 1]) - (b[..., 1] - a[..., 1]) * (
        q[..., 0] - a[..., 0])

  area = edge(p[:, 0], p[:, 1], p[:, 2])
  usable = (np.abs(area) > 1e-12) & ((area < 0) if cull_backfaces else True)
  q = np.asarray(points, np.float64)[:, None, :]
  with np.errstate(invalid="ignore"):  # NaN and infinite points cover nothing
    w0 = edge(p[None, :, 1], p[None, :, 2], q) / area
    w1 = edge(p[None, :, 2], p[None, :, 0], q) / area
    w2 = 1.0 - w0 - w1
    z = w0 * p[:, 0, 2] + w1 * p[:, 1, 2] + w2 * p[:, 2, 2]
  in_image = ((q[..., 0] >= 0) & (q[..., 0] <= width) & (q[..., 1] >= 0)
              & (q[..., 1] <= height))
  covered = usable & in_image & (w0 >= 0) & (w1 >= 0) & (w2 >= 0)
  z = np.where(covered, z, -np.inf)
  best = np.argmax(z, axis=1)
  rows = np.arange(len(points))
  depth = z[rows, best]
  found = np.isfinite(depth)
  bary = np.where(found[:, None],
                  np.stack([w0[rows, best], w1[rows, best], w2[rows, best]], -1), 0.0)
  return np.where(found, best, -1), depth, bary


@pytest.mark.parametrize("cull_backfaces", [True, False])
def test_random_triangle_soup_matches_the_definition_at_pixels_and_points(cull_backfaces):
  """A soup of large, small and sub-pixel triangles of both windings, many reaching past the
  edges of a non-square image, rasterised at every pixel centre and queried at random points
  (outside the image, on its far edges, NaN too): the same triangles, depths and barycentrics
  as the definition evaluated pair by pair, with no bounding boxes or cells."""
  rng = np.random.default_rng(7)
  height, width = 18, 26
  centres = rng.uniform([-6, -6], [width + 6, height + 6], size=(90, 1, 2))
  sizes = np.repeat([12.0, 3.0, 0.8], 30)[:, None, None]
  xy = centres + sizes * rng.uniform(-1, 1, size=(90, 3, 2))
  # Depths above every image coordinate: a y read where an x or z belongs shows.
  screen = np.concatenate([xy, rng.uniform(40, 90, size=(90, 3, 1))], -1).reshape(-1, 3)
  triangles = np.arange(270).reshape(90, 3)
  raster = rasterizer.rasterize(screen, triangles, height, width,
                                cull_backfaces=cull_backfaces)
  x, y = pixel_centres(height, width)
  ids, depth, bary = _brute_force_surface(screen, triangles, np.stack([x, y], -1).reshape(-1, 2),
                                          cull_backfaces, height, width)
  assert (ids >= 0).sum() > 100 and len(np.unique(ids[ids >= 0])) > 8
  assert (raster.triangle_ids.dtype, raster.barycentrics.dtype, raster.depth.dtype) == (
      np.int32, np.float32, np.float32)
  np.testing.assert_array_equal(raster.triangle_ids.reshape(-1), ids)
  np.testing.assert_allclose(raster.depth.reshape(-1), depth, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(raster.barycentrics.reshape(-1, 3), bary, atol=1e-4)
  points = np.concatenate([
      rng.uniform([-3, -3], [width + 3, height + 3], size=(400, 2)),
      np.stack([np.full(20, float(width)), rng.uniform(0, height, 20)], -1),
      np.stack([rng.uniform(0, width, 20), np.full(20, float(height))], -1),
      [[np.nan, 3.0], [4.0, np.inf]]])
  depth_q, ids_q, bary_q = rasterizer.front_surface_at(raster, points)
  ids, depth, bary = _brute_force_surface(screen, triangles, points, cull_backfaces, height,
                                          width)
  assert (ids >= 0).sum() > 50
  assert ids_q.dtype == np.int64
  np.testing.assert_array_equal(ids_q, ids)
  np.testing.assert_allclose(depth_q, depth, rtol=1e-9, atol=1e-9)
  np.testing.assert_allclose(bary_q, bary, atol=1e-9)


def test_sub_pixel_triangles_in_edge_cells_and_one_past_the_edge():
  """Sub-pixel triangles, each inside one cell of the image's first or last row or column (two
  touching the near edges x = 0 and y = 0), are found by exact queries at their centroids and on
  those edges, one at a time (a raster of one kept triangle) and together; a triangle whose
  vertical left edge lies less than half a pixel before the right edge of the image covers no
  pixel centre of the image (its first centres, x = W + 0.5, are past the edge and must not wrap
  into the next row)."""
  height, width = 6, 9
  corners = np.array([[0.3, 0.2], [0.3, 0.7], [0.8, 0.2]])  # clockwise on screen: front
  cells = [(0, 0), (0, width - 1), (height - 1, 0), (height - 1, width - 1), (2, 0), (0, 4)]
  shifts = [np.array([j, i], float) for i, j in cells]
  shifts[4] += [-0.3, 0.0]   # touches x = 0 (its vertical edge)
  shifts[5] += [0.0, -0.2]   # touches y = 0 (its horizontal edge)
  xy = np.concatenate([corners + shift for shift in shifts])
  screen = np.concatenate([xy, np.full((len(xy), 1), 5.0)], -1)
  triangles = np.arange(len(xy)).reshape(-1, 3)
  centroids = np.stack([xy[t].mean(0) for t in triangles])
  edge_points = np.array([[0.0, 2.4], [4.5, 0.0]])
  for k in range(len(triangles)):
    raster = rasterizer.rasterize(screen, triangles[k:k + 1], height, width)
    _, ids, _ = rasterizer.front_surface_at(raster, centroids[k:k + 1])
    assert ids.tolist() == [0]
  raster = rasterizer.rasterize(screen, triangles, height, width)
  depth, ids, _ = rasterizer.front_surface_at(raster, np.concatenate([centroids, edge_points]))
  assert ids.tolist() == list(range(len(triangles))) + [4, 5]
  np.testing.assert_allclose(depth, 5.0)
  past = np.array([[width - 0.2, 1.0, 1.0], [width + 6.0, 1.0, 1.0], [width - 0.2, 5.0, 1.0]])
  raster = rasterizer.rasterize(past, np.array([[0, 2, 1]]), height, width,
                                cull_backfaces=False)
  assert np.all(raster.triangle_ids == -1)
