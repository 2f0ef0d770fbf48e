"""Vectorised NumPy z-buffer rasteriser with exact point-visibility queries.

Screen frame (DESIGN.md section 3): points are ``(x, y, z)`` with ``(x, y)`` image pixels, x right,
y down, pixel ``(i, j)`` centred at ``(j + 0.5, i + 0.5)``; ``z`` is camera depth in mm, **larger
is nearer the camera**. Weak perspective is affine, so screen-space barycentric coordinates are the
barycentric coordinates of the 3D surface point: a surface point (triangle, barycentrics) found in
one view projects *exactly* into another view as the same barycentric blend of that view's
projected vertices.

Method: triangles are culled (back-facing, degenerate, off-screen); for every kept triangle the
pixel centres inside its bounding box are enumerated as flat (triangle, pixel) candidate pairs
(``np.repeat`` over per-triangle counts); the three edge functions select covered centres; the
z-buffer keeps, per pixel, the nearest candidate (one ``argsort`` of a composite
``pixel + depth-rank`` key). No Python loop over triangles or pixels.

:func:`front_surface_at` answers, for arbitrary sub-pixel points, which front-facing surface is
front-most *exactly at that point* (not at the nearest pixel centre), so visibility of a
correspondence does not depend on the pixel grid.

Triangle orientation: counter-clockwise seen from the front in model space (y up), hence
clockwise in the image (y down); a triangle is front-facing when its image-space signed area
``(x1-x0)(y2-y0) - (x2-x0)(y1-y0)`` is negative.
"""

from __future__ import annotations

import dataclasses
from typing import Tuple

import numpy as np


@dataclasses.dataclass(frozen=True)
class Raster:
  """One rasterised view.

  Attributes:
    triangle_ids: ``[H, W]`` int32, front-most triangle at each pixel centre (index into the
      mesh's triangle list), -1 where no triangle covers the centre.
    barycentrics: ``[H, W, 3]`` float32 barycentric coordinates of the pixel centre in that
      triangle (weights of its vertices 0, 1, 2), zeros on background.
    depth: ``[H, W]`` float32 camera depth (mm, larger nearer) of the surface seen, ``-inf`` on
      background.
    kept_triangles: ``[Tk]`` int64 ids of the front-facing, on-screen triangles.
    coefficients: ``[Tk, 9]`` float64 per kept triangle: ``w0 = a0 x + b0 y + c0``,
      ``w1 = a1 x + b1 y + c1`` and depth ``z = az x + bz y + cz`` as linear image functions.
    cell_box: ``[Tk, 4]`` int64 ``(j0, j1, i0, i1)`` inclusive range of image cells (unit squares
      ``[j, j+1) x [i, i+1)``) touched by each kept triangle's bounding box, clipped to the image.
    front_facing: ``[T]`` bool, for every mesh triangle.
  """

  triangle_ids: np.ndarray
  barycentrics: np.ndarray
  depth: np.ndarray
  kept_triangles: np.ndarray
  coefficients: np.ndarray
  cell_box: np.ndarray
  front_facing: np.ndarray

  @property
  def height(self) -> int:
    return self.triangle_ids.shape[0]

  @property
  def width(self) -> int:
    return self.triangle_ids.shape[1]


def _expand(counts: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
  """For per-item counts ``[N]`` returns ``(item [P], local [P])`` enumerating all pairs."""
  total = int(counts.sum())
  item = np.repeat(np.arange(counts.shape[0]), counts)
  starts = np.cumsum(counts) - counts
  local = np.arange(total) - np.repeat(starts, counts)
  return item, local


def _linear_coefficients(p0, p1, p2, area):
  """Coefficients of ``w0``, ``w1`` and ``z`` as linear functions of the image point.

  With ``E(a, b, p) = (b.x-a.x)(p.y-a.y) - (b.y-a.y)(p.x-a.x)`` and ``area = E(p0, p1, p2)``:
  ``w0 = E(p1, p2, p) / area``, ``w1 = E(p2, p0, p) / area``, ``w2 = 1 - w0 - w1``.
  """
  inv = 1.0 / area
  # E(a, b, p) = -(b.y-a.y) x + (b.x-a.x) y + [(b.y-a.y) a.x - (b.x-a.x) a.y]
  a0 = -(p2[:, 1] - p1[:, 1]) * inv
  b0 = (p2[:, 0] - p1[:, 0]) * inv
  c0 = ((p2[:, 1] - p1[:, 1]) * p1[:, 0] - (p2[:, 0] - p1[:, 0]) * p1[:, 1]) * inv
  a1 = -(p0[:, 1] - p2[:, 1]) * inv
  b1 = (p0[:, 0] - p2[:, 0]) * inv
  c1 = ((p0[:, 1] - p2[:, 1]) * p2[:, 0] - (p0[:, 0] - p2[:, 0]) * p2[:, 1]) * inv
  # z = w0 z0 + w1 z1 + (1 - w0 - w1) z2
  dz0 = p0[:, 2] - p2[:, 2]
  dz1 = p1[:, 2] - p2[:, 2]
  az = a0 * dz0 + a1 * dz1
  bz = b0 * dz0 + b1 * dz1
  cz = c0 * dz0 + c1 * dz1 + p2[:, 2]
  return np.stack([a0, b0, c0, a1, b1, c1, az, bz, cz], axis=1)


def rasterize(screen_points: np.ndarray, triangles: np.ndarray, height: int, width: int,
              cull_backfaces: bool = True) -> Raster:
  """Z-buffer rasterisation at pixel centres.

  Args:
    screen_points: ``[N, 3]`` float ``(x_px, y_px, z_mm)`` per vertex, image frame of the module
      docstring (larger z nearer).
    triangles: ``[T, 3]`` int vertex ids, counter-clockwise seen from the front in model space.
    height, width: image size in pixels.
    cull_backfaces: drop back-facing triangles (``False`` draws both sides, e.g. shadow maps of
      open meshes).

  Returns:
    a :class:`Raster`.
  """
  pts = np.asarray(screen_points, dtype=np.float64)
  tris = np.asarray(triangles)
  p0, p1, p2 = pts[tris[:, 0]], pts[tris[:, 1]], pts[tris[:, 2]]
  area = (p1[:, 0] - p0[:, 0]) * (p2[:, 1] - p0[:, 1]) - (p2[:, 0] - p0[:, 0]) * (p1[:, 1] - p0[:, 1])
  front_facing = area < 0
  keep = front_facing if cull_backfaces else np.ones_like(front_facing)
  keep &= np.abs(area) > 1e-12
  # Element-wise min / max (axis=1 reductions over 3 are slow in NumPy).
  xmin = np.minimum(np.minimum(p0[:, 0], p1[:, 0]), p2[:, 0])
  xmax = np.maximum(np.maximum(p0[:, 0], p1[:, 0]), p2[:, 0])
  ymin = np.minimum(np.minimum(p0[:, 1], p1[:, 1]), p2[:, 1])
  ymax = np.maximum(np.maximum(p0[:, 1], p1[:, 1]), p2[:, 1])
  keep &= (xmax >= 0) & (xmin <= width) & (ymax >= 0) & (ymin <= height)
  kept = np.nonzero(keep)[0]
  p0, p1, p2, area = p0[kept], p1[kept], p2[kept], area[kept]
  xmin, xmax, ymin, ymax = xmin[kept], xmax[kept], ymin[kept], ymax[kept]
  coefficients = _linear_coefficients(p0, p1, p2, area)
  cell_box = np.stack([
      np.clip(np.floor(xmin), 0, width - 1), np.clip(np.floor(xmax), 0, width - 1),
      np.clip(np.floor(ymin), 0, height - 1), np.clip(np.floor(ymax), 0, height - 1)],
      axis=1).astype(np.int64)

  # Pixel centres j + 0.5 inside [xmin, xmax]: j in [ceil(xmin - 0.5), floor(xmax - 0.5)].
  j0 = np.maximum(np.ceil(xmin - 0.5), 0).astype(np.int64)
  j1 = np.minimum(np.floor(xmax - 0.5), width - 1).astype(np.int64)
  i0 = np.maximum(np.ceil(ymin - 0.5), 0).astype(np.int64)
  i1 = np.minimum(np.floor(ymax - 0.5), height - 1).astype(np.int64)
  nx = np.maximum(j1 - j0 + 1, 0)
  ny = np.maximum(i1 - i0 + 1, 0)
  item, local = _expand(nx * ny)
  nxi = nx[item]
  jj = j0[item] + local % nxi
  ii = i0[item] + local // nxi
  c = coefficients[item]
  x = jj + 0.5
  y = ii + 0.5
  w0 = c[:, 0] * x + c[:, 1] * y + c[:, 2]
  w1 = c[:, 3] * x + c[:, 4] * y + c[:, 5]
  w2 = 1.0 - w0 - w1
  inside = np.nonzero((w0 >= 0) & (w1 >= 0) & (w2 >= 0))[0]
  item, w0, w1, w2 = item[inside], w0[inside], w1[inside], w2[inside]
  c, x, y = c[inside], x[inside], y[inside]
  pixel = ii[inside] * width + jj[inside]
  z = c[:, 6] * x + c[:, 7] * y + c[:, 8]

  triangle_ids = np.full(height * width, -1, dtype=np.int32)
  barycentrics = np.zeros((height * width, 3), dtype=np.float32)
  depth = np.full(height * width, -np.inf, dtype=np.float32)
  if pixel.size:
    zmin, zmax = z.min(), z.max()
    rank = (zmax - z) / max(zmax - zmin, 1e-9) * 0.5  # in [0, 0.5], 0 = nearest
    order = np.argsort(pixel + rank, kind="stable")
    sorted_pixel = pixel[order]
    first = np.ones(order.shape[0], dtype=bool)
    first[1:] = sorted_pixel[1:] != sorted_pixel[:-1]
    win = order[first]
    px = pixel[win]
    triangle_ids[px] = kept[item[win]]
    barycentrics[px] = np.stack([w0[win], w1[win], w2[win]], axis=1)
    depth[px] = z[win]
  return Raster(
      triangle_ids=triangle_ids.reshape(height, width),
      barycentrics=barycentrics.reshape(height, width, 3),
      depth=depth.reshape(height, width),
      kept_triangles=kept, coefficients=coefficients, cell_box=cell_box,
      front_facing=front_facing)


def front_surface_at(raster: Raster, points_px: np.ndarray,
                     ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The front-most kept surface exactly at arbitrary image points.

  Args:
    raster: from :func:`rasterize` of the view.
    points_px: ``[Q, 2]`` image points ``(x, y)`` (pixel-centre convention of the module).

  Returns:
    ``(depth [Q] float64, triangle_id [Q] int64, barycentrics [Q, 3] float64)``: camera depth of
    the front-most kept triangle containing each point (``-inf`` and -1 where none does or the
    point is outside the image) and the point's barycentrics in it.
  """
  q = np.asarray(points_px, dtype=np.float64).reshape(-1, 2)
  num = q.shape[0]
  out_depth = np.full(num, -np.inf)
  out_tri = np.full(num, -1, dtype=np.int64)
  out_bary = np.zeros((num, 3))
  height, width = raster.height, raster.width
  inside_image = (q[:, 0] >= 0) & (q[:, 0] <= width) & (q[:, 1] >= 0) & (q[:, 1] <= height)
  inside_image &= np.isfinite(q).all(axis=1)
  if not inside_image.any() or raster.kept_triangles.size == 0:
    return out_depth, out_tri, out_bary
  qi = np.nonzero(inside_image)[0]
  # A point on a cell border belongs to both cells; clip to the image's last cell.
  cj = np.clip(np.floor(q[qi, 0]), 0, width - 1).astype(np.int64)
  ci = np.clip(np.floor(q[qi, 1]), 0, height - 1).astype(np.int64)
  query_cell = ci * width + cj
  needed = np.zeros(height * width, dtype=bool)
  needed[query_cell] = True
  # Kept triangles whose cell box touches a queried cell (summed-area table of the queried
  # cells: O(1) per triangle), then their cells that are queried.
  sat = np.zeros((height + 1, width + 1), np.int32)
  sat[1:, 1:] = needed.reshape(height, width).cumsum(axis=0, dtype=np.int32).cumsum(axis=1)
  box = raster.cell_box
  touched = (sat[box[:, 3] + 1, box[:, 1] + 1] - sat[box[:, 2], box[:, 1] + 1]
             - sat[box[:, 3] + 1, box[:, 0]] + sat[box[:, 2], box[:, 0]]) > 0
  candidates = np.nonzero(touched)[0]
  box = box[candidates]
  nx = box[:, 1] - box[:, 0] + 1
  ny = box[:, 3] - box[:, 2] + 1
  item, local = _expand(nx * ny)
  cell = (box[item, 2] + local // nx[item]) * width + box[item, 0] + local % nx[item]
  hit = needed[cell]
  item, cell = candidates[item[hit]], cell[hit]
  order = np.argsort(cell, kind="stable")
  item, cell = item[order], cell[order]
  # Join queries with the triangles of their cell.
  lo = np.searchsorted(cell, query_cell, side="left")
  hi = np.searchsorted(cell, query_cell, side="right")
  pair_query, pair_local = _expand(hi - lo)
  pair_item = item[lo[pair_query] + pair_local]
  c = raster.coefficients[pair_item]
  x = q[qi[pair_query], 0]
  y = q[qi[pair_query], 1]
  w0 = c[:, 0] * x + c[:, 1] * y + c[:, 2]
  w1 = c[:, 3] * x + c[:, 4] * y + c[:, 5]
  w2 = 1.0 - w0 - w1
  eps = 1e-9
  covered = (w0 >= -eps) & (w1 >= -eps) & (w2 >= -eps)
  z = np.where(covered, c[:, 6] * x + c[:, 7] * y + c[:, 8], -np.inf)
  if z.size == 0:
    return out_depth, out_tri, out_bary
  # Per query: the covered pair of maximum depth.
  rank = np.lexsort((-z, pair_query))
  sorted_query = pair_query[rank]
  first = np.ones(rank.shape[0], dtype=bool)
  first[1:] = sorted_query[1:] != sorted_query[:-1]
  best = rank[first]
  best = best[np.isfinite(z[best])]
  target = qi[pair_query[best]]
  out_depth[target] = z[best]
  out_tri[target] = raster.kept_triangles[pair_item[best]]
  out_bary[target] = np.stack([w0[best], w1[best], w2[best]], axis=1)
  return out_depth, out_tri, out_bary
