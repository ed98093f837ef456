//! A network as an ONNX model: raw `[0,1]` image in, logits out, normalisation inside.

use super::ExportError;
use super::onnx_proto::{
    AttributeProto, Dimension, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TensorTypeProto, TypeProto, ValueInfoProto, attribute_type, data_type,
};
use crate::model::{BATCH_NORM_EPS, Layer, Net, Normalization};
use candle_core::Tensor;
use prost::Message;

/// ONNX operator set the model is written for (every operator used is unchanged since 13 or
/// earlier).
pub const ONNX_OPSET: i64 = 13;
/// ONNX IR version that goes with [`ONNX_OPSET`].
const ONNX_IR_VERSION: i64 = 7;
/// Name of the model's input: one `[1, C, H, W]` image with pixel values in `[0,1]`.
pub const ONNX_INPUT: &str = "input";
/// Name of the model's output: `[1, classes]` logits.
pub const ONNX_OUTPUT: &str = "output";

/// One operation of the exported graph, with its constants.
enum Op {
    /// `(x - mean) / std` per channel: ONNX `Sub` then `Div`.
    Normalize {
        mean: Vec<f32>,
        std: Vec<f32>,
    },
    /// Convolution (a following BatchNorm folded in).
    Conv {
        weight: Vec<f32>,
        weight_dims: Vec<usize>,
        bias: Vec<f32>,
        stride: usize,
        padding: usize,
    },
    /// `x·Wᵀ + b` (a following BatchNorm folded in): ONNX `Gemm` with `transB = 1`.
    Gemm {
        weight: Vec<f32>,
        weight_dims: Vec<usize>,
        bias: Vec<f32>,
    },
    /// BatchNorm that follows no affine layer, with its running statistics.
    BatchNorm {
        scale: Vec<f32>,
        bias: Vec<f32>,
        mean: Vec<f32>,
        var: Vec<f32>,
    },
    Relu,
    Flatten,
}

/// The network as an ONNX model (opset [`ONNX_OPSET`], input [`ONNX_INPUT`] of shape
/// `[1, C, H, W]`, output [`ONNX_OUTPUT`] of shape `[1, classes]`).
///
/// Layers map to `Sub`/`Div` (normalisation), `Conv`, `Gemm`, `Relu` and `Flatten`. A
/// BatchNorm right after a convolution or linear layer is folded into its weights with the
/// running statistics (the evaluation behaviour); any other BatchNorm becomes
/// `BatchNormalization`.
pub fn onnx_model(net: &Net) -> Result<ModelProto, ExportError> {
    let ops = operations(net)?;
    let mut nodes = Vec::new();
    let mut initializers = Vec::new();
    let mut current = ONNX_INPUT.to_string();
    let last = ops.len().saturating_sub(1);
    for (index, (layer, op)) in ops.iter().enumerate() {
        let out = if index == last {
            ONNX_OUTPUT.to_string()
        } else {
            format!("x{}", index + 1)
        };
        let mut constant = |role: &str, values: &[f32], dims: &[usize]| -> String {
            let name = format!("{layer}.{role}");
            initializers.push(float_tensor(&name, values, dims));
            name
        };
        match op {
            Op::Normalize { mean, std } => {
                let dims = [1, mean.len(), 1, 1];
                let mean = constant("mean", mean, &dims);
                let std = constant("std", std, &dims);
                let centred = format!("x{}_centred", index + 1);
                nodes.push(node("Sub", *layer, &[&current, &mean], &centred, vec![]));
                nodes.push(node("Div", *layer, &[&centred, &std], &out, vec![]));
            }
            Op::Conv {
                weight,
                weight_dims,
                bias,
                stride,
                padding,
            } => {
                let w = constant("weight", weight, weight_dims);
                let b = constant("bias", bias, &[bias.len()]);
                let (k, s, p) = (weight_dims[2] as i64, *stride as i64, *padding as i64);
                let attributes = vec![
                    ints("kernel_shape", &[k, k]),
                    ints("strides", &[s, s]),
                    ints("pads", &[p, p, p, p]),
                    ints("dilations", &[1, 1]),
                    int("group", 1),
                ];
                nodes.push(node("Conv", *layer, &[&current, &w, &b], &out, attributes));
            }
            Op::Gemm {
                weight,
                weight_dims,
                bias,
            } => {
                let w = constant("weight", weight, weight_dims);
                let b = constant("bias", bias, &[bias.len()]);
                let attributes = vec![int("transB", 1)];
                nodes.push(node("Gemm", *layer, &[&current, &w, &b], &out, attributes));
            }
            Op::BatchNorm {
                scale,
                bias,
                mean,
                var,
            } => {
                let dims = [scale.len()];
                let inputs = [
                    current.clone(),
                    constant("weight", scale, &dims),
                    constant("bias", bias, &dims),
                    constant("running_mean", mean, &dims),
                    constant("running_var", var, &dims),
                ];
                let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
                let attributes = vec![float("epsilon", BATCH_NORM_EPS as f32)];
                nodes.push(node(
                    "BatchNormalization",
                    *layer,
                    &inputs,
                    &out,
                    attributes,
                ));
            }
            Op::Relu => nodes.push(node("Relu", *layer, &[&current], &out, vec![])),
            Op::Flatten => nodes.push(node(
                "Flatten",
                *layer,
                &[&current],
                &out,
                vec![int("axis", 1)],
            )),
        }
        current = out;
    }
    let [channels, height, width] = net.spec().input_shape;
    let graph = GraphProto {
        node: nodes,
        name: Some("cthpo".into()),
        initializer: initializers,
        doc_string: None,
        input: vec![value_info(ONNX_INPUT, &[1, channels, height, width])],
        output: vec![value_info(ONNX_OUTPUT, &[1, net.num_classes()])],
    };
    Ok(ModelProto {
        ir_version: Some(ONNX_IR_VERSION),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(ONNX_OPSET),
        }],
        producer_name: Some("cthpo".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        doc_string: Some(
            "input: [1, C, H, W] image with pixel values in [0, 1]; output: [1, classes] logits"
                .into(),
        ),
        graph: Some(graph),
    })
}

/// The network as the bytes of an ONNX file (see [`onnx_model`]).
pub fn onnx_bytes(net: &Net) -> Result<Vec<u8>, ExportError> {
    Ok(onnx_model(net)?.encode_to_vec())
}

/// The network's layers as graph operations, each with the index of the layer it comes from
/// (the state-dict prefix its constants are named after), BatchNorm folded where it can be.
fn operations(net: &Net) -> Result<Vec<(usize, Op)>, ExportError> {
    let mut ops: Vec<(usize, Op)> = Vec::new();
    for (index, layer) in net.layers().iter().enumerate() {
        let op = match layer {
            Layer::Normalize { mean, std } => Op::Normalize {
                mean: values(mean)?,
                std: values(std)?,
            },
            Layer::Conv2d {
                weight,
                bias,
                stride,
                padding,
            } => Op::Conv {
                weight: values(weight)?,
                weight_dims: weight.dims().to_vec(),
                bias: values(bias)?,
                stride: *stride,
                padding: *padding,
            },
            Layer::Linear { weight, bias } => Op::Gemm {
                weight: values(weight)?,
                weight_dims: weight.dims().to_vec(),
                bias: values(bias)?,
            },
            Layer::BatchNorm {
                weight: gamma,
                bias: beta,
                running_mean,
                running_var,
            } => {
                let (scale, shift) = net.batch_norm_affine(index, Normalization::Population)?;
                let (scale, shift) = (values(&scale)?, values(&shift)?);
                let previous = ops.last_mut().filter(|(layer, _)| *layer + 1 == index);
                match previous {
                    Some((_, Op::Conv { weight, bias, .. } | Op::Gemm { weight, bias, .. })) => {
                        fold_channel_affine(weight, bias, &scale, &shift);
                        continue;
                    }
                    _ => Op::BatchNorm {
                        scale: values(gamma)?,
                        bias: values(beta)?,
                        mean: values(running_mean)?,
                        var: values(running_var)?,
                    },
                }
            }
            Layer::Relu => Op::Relu,
            Layer::Flatten => Op::Flatten,
        };
        ops.push((index, op));
    }
    Ok(ops)
}

/// Folds `y ↦ scale[c]·y + shift[c]` on output channel `c` into an affine layer's weights
/// (rows of `[out, …]`) and bias.
fn fold_channel_affine(weight: &mut [f32], bias: &mut [f32], scale: &[f32], shift: &[f32]) {
    let per_channel = weight.len() / bias.len();
    for (channel, row) in weight.chunks_mut(per_channel).enumerate() {
        row.iter_mut().for_each(|w| *w *= scale[channel]);
        bias[channel] = bias[channel] * scale[channel] + shift[channel];
    }
}

fn values(tensor: &Tensor) -> Result<Vec<f32>, ExportError> {
    Ok(tensor
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?)
}

fn float_tensor(name: &str, values: &[f32], dims: &[usize]) -> TensorProto {
    TensorProto {
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: Some(data_type::FLOAT),
        name: Some(name.into()),
        raw_data: Some(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
    }
}

fn node(
    op_type: &str,
    layer: usize,
    inputs: &[&str],
    output: &str,
    attribute: Vec<AttributeProto>,
) -> NodeProto {
    NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.to_string()],
        name: Some(format!("{op_type}_{layer}_{output}")),
        op_type: Some(op_type.into()),
        attribute,
    }
}

fn ints(name: &str, values: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(attribute_type::INTS),
        ints: values.to_vec(),
        ..Default::default()
    }
}

fn int(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(attribute_type::INT),
        i: Some(value),
        ..Default::default()
    }
}

fn float(name: &str, value: f32) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(attribute_type::FLOAT),
        f: Some(value),
        ..Default::default()
    }
}

fn value_info(name: &str, dims: &[usize]) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            tensor_type: Some(TensorTypeProto {
                elem_type: Some(data_type::FLOAT),
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|&d| Dimension {
                            dim_value: Some(d as i64),
                        })
                        .collect(),
                }),
            }),
        }),
    }
}
