"""The alignment cascade on the point-head DFF encoder (issue 12), trained as ``align_real``.

Command (after ``experiments/configs/dff_point.py``; needs the real-face fit cache)::

  python -m experiments.train_alignment --config=experiments/configs/align_point.py \\
      --workdir=/work/runs/align_point

Same faces, seeds and ridge settings as ``align_real`` (7000 views of faces68 training faces,
2000 synthetic faces), descriptors from the ``dff_point`` encoder. Its point fields take about
1.1 MB per face in host memory (float16 pyramid, float32 head), half a dense map, so all 9000
faces are described once and kept (``max_faces_in_memory``) instead of being described again for
every stage.
"""

from experiments.configs import align_real


def get_config():
  config = align_real.get_config()
  config.checkpoint = "/work/runs/dff_point/bundle"
  config.max_faces_in_memory = 9000
  return config
