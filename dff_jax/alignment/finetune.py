"""Moved: :mod:`dff_jax.training.finetune` (a trainer; the alignment package imports none).

This name stays only so that jobs started before the move, which import
``dff_jax.alignment.finetune`` lazily, keep working: importing it loads nothing from the alignment
package's side and returns the training module itself. Import ``dff_jax.training.finetune``.
"""

import importlib
import sys

sys.modules[__name__] = importlib.import_module("dff_jax.training.finetune")
