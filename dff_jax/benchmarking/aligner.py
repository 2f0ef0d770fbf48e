"""Speed of the public API, ``dff_jax.Aligner.align``, with and without face detection
(``--what=aligner``).

Loads ``Aligner.load(cascade=...)``, compiles everything once (batch sizes 1 to ``batch_size``,
the detector), then times, ``repeats`` times each (the best run is reported):

* ``detect_only``: :func:`dff_jax.detection.detect_faces` on every image, one at a time;
* ``align_detect``: one ``aligner.align(images)`` call (every face found by the detector and
  aligned again from its own landmark box until its crop stops moving: ``refine=2``, the
  default);
* ``align_detect_one_pass``: the same with ``refine=0`` (one pass from the detector's box);
* ``align_given_boxes``: the detector's corrected boxes of those faces given as landmark boxes
  (``box_convention="landmarks"``: no detection, one pass);
* ``align_one_per_call``: ``aligner.align([image])`` per image (detection included).

One record per mode: ``what``, ``mode``, ``images``, ``faces``, ``ms_per_image``,
``images_per_second`` (= ``items_per_second``), ``batch_size``, ``compile_s`` (first call), ``cascade``, ``loadavg``.
"""

from __future__ import annotations

import time
from typing import Any, Dict, Iterator, List, Optional

from dff_jax import benchmarking


def read_images(spec: str, num_images: int = 64) -> List[Any]:
  """The first ``num_images`` images of a folder / glob / list (``[H, W, 3]`` uint8 each).

  Raises:
    FileNotFoundError, ValueError: no images, or an unreadable one.
  """
  from dff_jax import image_io  # pylint: disable=g-import-not-at-top
  from dff_jax.alignment import streaming  # pylint: disable=g-import-not-at-top
  paths = streaming.list_images(spec)[:int(num_images)]
  return [image_io.read_image(path) for path in paths]


def bench_aligner(images: List[Any] | str | None = None, cascade: Optional[str] = None, batch_size: int = 8,
                  repeats: int = 2, checkpoint: Optional[str] = None,
                  num_images: int = 64) -> Iterator[Dict[str, Any]]:
  """The measurements of the module docstring, one dict per mode.

  Args:
    images: ``[H, W, 3]`` uint8 images, or a folder / glob / list of files (the first
      ``num_images`` are read).
    cascade, checkpoint: as :meth:`dff_jax.Aligner.load` takes them (default: the shipped pair).
    batch_size: the aligner's batch size.
    repeats: timed runs per mode (the best is reported).
  """
  from dff_jax import Aligner, detection  # pylint: disable=g-import-not-at-top
  if images is None:
    raise ValueError("the aligner benchmark needs images (--images=DIR|GLOB)")
  if int(num_images) < 1 or int(repeats) < 1 or int(batch_size) < 1:
    raise ValueError(f"--num_images, --repeats and --batch_size must be >= 1, got {num_images}, "
                     f"{repeats}, {batch_size}")
  if isinstance(images, str):
    images = read_images(images, num_images)
  if not len(images):
    raise ValueError("the aligner benchmark got no images (--images=DIR|GLOB)")
  start = time.perf_counter()
  aligner = Aligner.load(cascade=cascade, checkpoint=checkpoint, batch_size=batch_size)
  once = Aligner.load(cascade=cascade, checkpoint=checkpoint, batch_size=batch_size, refine=0)
  height, width = images[0].shape[:2]
  box = [0.25 * width, 0.25 * height, 0.75 * width, 0.75 * height]
  size = 1
  while True:  # every batch size align() may use (1, 2, 4, ..., batch_size), and the detector
    aligner.align(images[:1], boxes=[[box] * size])
    if size >= batch_size:
      break
    size = min(2 * size, batch_size)
  aligner.detect(images[0])
  compile_s = time.perf_counter() - start
  found = aligner.align(images)
  boxes = [[face.box for face in faces] for faces in found]
  faces = sum(len(f) for f in found)
  modes = {
      "detect_only": lambda: [detection.detect_faces(image) for image in images],
      "align_detect": lambda: aligner.align(images),
      "align_detect_one_pass": lambda: once.align(images),
      "align_given_boxes": lambda: aligner.align(images, boxes=boxes, box_convention="landmarks"),
      "align_one_per_call": lambda: [aligner.align([image]) for image in images],
  }
  for mode, run in modes.items():
    best = float("inf")
    for _ in range(repeats):
      start = time.perf_counter()
      run()
      best = min(best, time.perf_counter() - start)
    yield {"what": "aligner", "mode": mode, "images": len(images), "faces": faces,
           "ms_per_image": round(1000 * best / len(images), 2),
           "images_per_second": round(len(images) / best, 2),
           "items_per_second": round(len(images) / best, 2), "batch_size": batch_size,
           "compile_s": round(compile_s, 2), "cascade": str(aligner.cascade.spec.cascade_path),
           "loadavg": benchmarking.loadavg()}
