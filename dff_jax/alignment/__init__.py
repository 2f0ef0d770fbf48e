"""Alignment: pose and 3DMM shape fitting to landmarks (and, later, the DFF cascade).

Importing this package imports JAX.
"""

from dff_jax.alignment.fitting import CONTOUR_MODES
from dff_jax.alignment.fitting import estimate_pose_weak_perspective
from dff_jax.alignment.fitting import fit_landmarks
from dff_jax.alignment.fitting import fit_shape_and_pose
from dff_jax.alignment.fitting import fit_shape_linear
from dff_jax.alignment.fitting import FitResult
from dff_jax.alignment.fitting import select_landmark_vertex_ids
from dff_jax.alignment.fitting import validate_landmarks

__all__ = [
    "CONTOUR_MODES", "FitResult", "estimate_pose_weak_perspective", "fit_shape_linear",
    "select_landmark_vertex_ids", "fit_shape_and_pose", "fit_landmarks", "validate_landmarks",
]
