"""Trainers that import the alignment package (the alignment package never imports a trainer).

``finetune``: end-to-end fine-tuning of the encoder and the cascade's regressors through the
alignment loop (``experiments.finetune_end_to_end``). The encoder's trainer is still
:mod:`dff_jax.train`; the two loops (NaN guard, checkpoints, progress, ``metrics.jsonl``) are
not yet one.
"""
