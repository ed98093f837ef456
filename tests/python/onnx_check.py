"""Checks an ONNX file cthpo exported with ONNX itself (used by tests/export.rs).

Usage: onnx_check.py MODEL.onnx INPUTS.json

INPUTS.json holds a list of images, each a flat list of C*H*W floats. Prints one JSON object:
the operator types in graph order, the default-domain opset, the input and output shapes, and
the logits onnxruntime computes for each image (fed one at a time as [1, C, H, W]).
"""

import json
import sys

import numpy as np
import onnx
import onnxruntime


def shape(value_info):
    return [d.dim_value for d in value_info.type.tensor_type.shape.dim]


def main():
    model_path, inputs_path = sys.argv[1], sys.argv[2]
    model = onnx.load(model_path)
    onnx.checker.check_model(model, full_check=True)
    input_shape = shape(model.graph.input[0])
    session = onnxruntime.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    with open(inputs_path) as f:
        images = json.load(f)
    outputs = []
    for image in images:
        x = np.asarray(image, dtype=np.float32).reshape(input_shape)
        (logits,) = session.run(None, {model.graph.input[0].name: x})
        outputs.append([float(v) for v in logits.reshape(-1)])
    opset = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    print(json.dumps({
        "ops": [n.op_type for n in model.graph.node],
        "opset": opset[0],
        "input_shape": input_shape,
        "output_shape": shape(model.graph.output[0]),
        "outputs": outputs,
    }))


if __name__ == "__main__":
    main()
