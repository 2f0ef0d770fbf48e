"""The one training loop of every trainer: the DFF encoder's (:func:`dff_jax.train.train_and_evaluate`)
and end-to-end fine-tuning's (:mod:`dff_jax.training.finetune`).

It steps any model: a jitted ``step_fn(state, batch) -> (state, metrics)``, a NaN guard that
names the step and keeps the last good checkpoint, Orbax checkpoints, the progress bar, and
"train" records in ``metrics.jsonl``; a trainer's periodic evaluation runs as ``after_step``.
Importing this module imports neither the alignment package nor the data pipeline.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Iterator, Mapping, Optional, Tuple

import jax

from dff_jax import checkpoint as checkpoint_lib
from dff_jax import progress as progress_lib


class NonFiniteLossError(FloatingPointError):
  """The loss or gradient became NaN / Inf; the message names the step."""


def run_training_loop(step_fn: Callable[[Any, Any], Tuple[Any, Mapping[str, Any]]], state: Any,
                      batches: Iterator[Any], *, start_step: int, num_steps: int,
                      checkpointer: checkpoint_lib.Checkpointer,
                      writer: progress_lib.MetricsWriter, bar: progress_lib.ProgressBar,
                      log_every: int, items_per_step: int,
                      after_step: Optional[Callable[[int, Any], bool]] = None,
                      hint: str = "Lower config.learning_rate or check the data.") -> Any:
  """Steps ``start_step .. num_steps - 1``; returns the final state.

  Each step: ``state, metrics = step_fn(state, next(batches))``; a non-finite ``metrics["loss"]``
  or ``metrics["grad_norm"]`` raises :class:`NonFiniteLossError` naming the step (pending
  checkpoint writes are finished first, so the last good checkpoint is kept; ``hint`` ends the
  message); the state is checkpointed (every ``checkpointer.save_interval_steps`` steps and at
  ``num_steps``); the bar shows the loss and items per second; every ``log_every`` steps (and the
  last) a "train" record with the metrics, ``images_per_second``, ``steps_per_second`` and
  ``seconds_per_step`` goes to ``writer``; then ``after_step(done, state)`` (e.g. a periodic
  evaluation), which returns True when it took time the throughput window must not count. The
  bar and the checkpointer are closed on exit, also on errors.
  """
  window_start, window_steps = time.time(), 0
  try:
    for step, batch in zip(range(start_step, num_steps), batches):
      state, metrics = step_fn(state, batch)
      metrics = jax.device_get(metrics)
      window_steps += 1
      done = step + 1
      loss, grad_norm = float(metrics["loss"]), float(metrics["grad_norm"])
      if not (math.isfinite(loss) and math.isfinite(grad_norm)):
        checkpointer.wait()
        raise NonFiniteLossError(
            f"Non-finite loss {loss} (grad norm {grad_norm}) at step {step}; stopped. The last "
            f"good checkpoint (step {checkpointer.latest_step()}) is kept in "
            f"{checkpointer.directory}. {hint}")
      checkpointer.save(done, state, force=done == num_steps)
      elapsed = max(time.time() - window_start, 1e-9)
      bar.update(done, loss=loss, images_per_second=window_steps * items_per_step / elapsed)
      if done % log_every == 0 or done == num_steps:
        writer.write(done, dict(metrics, images_per_second=window_steps * items_per_step
                                / elapsed, steps_per_second=window_steps / elapsed,
                                seconds_per_step=elapsed / window_steps))
        window_start, window_steps = time.time(), 0
      if after_step is not None and after_step(done, state):
        window_start, window_steps = time.time(), 0
  finally:
    bar.close()
    checkpointer.close()
  return state
