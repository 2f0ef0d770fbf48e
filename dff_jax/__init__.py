"""dff-jax: Deep Face Feature for face alignment, in JAX/Flax.

Public API (README.md, WORKSPACE.md section 13):

* :class:`Aligner`: ``Aligner.load()`` then ``aligner.align(images, boxes=None)`` -> per image a
  list of :class:`Face` (``landmarks_px``, ``landmarks_3d_px``, ``visibility``, ``pose``
  (:class:`Pose`), ``shape_coefficients``, ``expression_coefficients``, ``box``, ``score``).
* :func:`align_faces`: the same alignment as one pure, differentiable function of
  ``(encoder_params, cascade_params, images, boxes)``.

Importing this package does not import JAX (the NumPy data pipeline shares its geometry and
face-model math); the names above and the JAX modules (e.g. ``dff_jax.alignment``) import it when
first used.
"""

import logging as _logging

__version__ = "0.1.0"

_PUBLIC = ("Aligner", "align_faces", "Face", "Pose")
__all__ = list(_PUBLIC)


def __getattr__(name):
  if name in _PUBLIC:
    from dff_jax import aligner  # pylint: disable=g-import-not-at-top
    return getattr(aligner, name)
  raise AttributeError(f"module 'dff_jax' has no attribute {name!r}")


class _QuietBackendProbe(_logging.Filter):
  """Drops JAX's INFO line "Unable to initialize backend 'tpu' / 'cuda' ..." logged while it
  probes for accelerators the user did not ask for (on a CPU-only machine, every absl command
  would print it). JAX logs that line at INFO only when the platform was not requested
  (``JAX_PLATFORMS`` unset); a requested platform that fails still raises, and every warning or
  error still shows."""

  def filter(self, record: _logging.LogRecord) -> bool:
    return not (record.levelno < _logging.WARNING
                and str(record.msg).startswith("Unable to initialize backend"))


_logging.getLogger("jax._src.xla_bridge").addFilter(_QuietBackendProbe())
