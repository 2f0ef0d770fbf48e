"""Trainers that import the alignment package (the alignment package never imports a trainer),
and the one training loop.

``loop``: :func:`~dff_jax.training.loop.run_training_loop` (NaN guard, checkpoints, progress bar,
``metrics.jsonl``), the loop of both the DFF encoder's trainer (:mod:`dff_jax.train`) and
end-to-end fine-tuning. ``finetune``: end-to-end fine-tuning of the encoder and the cascade's
regressors through the alignment loop (``experiments.finetune_end_to_end``).
"""
