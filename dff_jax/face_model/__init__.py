"""Face models: the ``FaceModel`` pytree, its pure 3DMM math, loaders and the embedded default.

NumPy only (no JAX import here); JAX code that passes a ``FaceModel`` through ``jit`` imports
:mod:`dff_jax.face_model.jax_support` (registers the pytree).
"""

# Submodules first: importing the ``albedo`` submodule would otherwise shadow the ``albedo``
# function re-exported below.
from dff_jax.face_model.loaders import default_face_model, load_face_model, save_face_model
from dff_jax.face_model.model import (
    FaceModel, JAW_LANDMARKS, LEFT_JAW_LANDMARKS, MIRROR_LANDMARKS, NUM_LANDMARKS, PART_NAMES, RIGHT_JAW_LANDMARKS,
    albedo, contour_vertex_ids, gather_vertices, landmark_vertex_ids_for_pose, landmarks_3d,
    register_pytree, vertices)

__all__ = [
    "FaceModel", "JAW_LANDMARKS", "LEFT_JAW_LANDMARKS", "MIRROR_LANDMARKS", "NUM_LANDMARKS", "PART_NAMES",
    "RIGHT_JAW_LANDMARKS", "albedo", "contour_vertex_ids", "default_face_model",
    "gather_vertices", "landmark_vertex_ids_for_pose", "landmarks_3d", "load_face_model",
    "register_pytree", "save_face_model", "vertices",
]
