//! Network descriptions: the serde layer list, activation shapes and the builtin architectures.

use super::ModelError;
use serde::{Deserialize, Serialize};

/// One layer of a network description, serialised as in `nn.Sequential` order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum LayerSpec {
    /// Per-channel `(x - mean) / std`; no parameters.
    Normalize {
        /// Per-channel mean subtracted from the input.
        mean: Vec<f32>,
        /// Per-channel standard deviation the input is divided by (must be > 0).
        std: Vec<f32>,
    },
    /// 2-D convolution with bias (square kernel, equal stride and padding in both directions).
    Conv2d {
        /// Number of output channels.
        out_channels: usize,
        /// Kernel height and width.
        kernel_size: usize,
        /// Stride in both directions.
        #[serde(default = "one")]
        stride: usize,
        /// Zero padding on every side.
        #[serde(default)]
        padding: usize,
    },
    /// Fully connected layer with bias.
    Linear {
        /// Number of output features.
        out_features: usize,
    },
    /// Rectified linear unit.
    Relu,
    /// Flattens `[C, H, W]` activations into a vector.
    Flatten,
    /// Batch normalisation over channels (2-D after a conv, 1-D after a linear layer).
    BatchNorm {},
}

fn one() -> usize {
    1
}

/// Shape of one sample's activations between layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActivationShape {
    /// Image-like activations `[channels, height, width]`.
    Image {
        /// Number of channels.
        channels: usize,
        /// Height in pixels.
        height: usize,
        /// Width in pixels.
        width: usize,
    },
    /// A flat feature vector.
    Flat(usize),
}

impl ActivationShape {
    /// Number of scalars in one sample's activation.
    pub fn numel(&self) -> usize {
        match *self {
            ActivationShape::Image {
                channels,
                height,
                width,
            } => channels * height * width,
            ActivationShape::Flat(n) => n,
        }
    }

    /// Dimensions of a batch of such activations, batch first.
    pub fn batch_dims(&self, batch: usize) -> Vec<usize> {
        match *self {
            ActivationShape::Image {
                channels,
                height,
                width,
            } => vec![batch, channels, height, width],
            ActivationShape::Flat(n) => vec![batch, n],
        }
    }

    /// Number of channels (features for flat activations), the axis BatchNorm normalises.
    pub fn channels(&self) -> usize {
        match *self {
            ActivationShape::Image { channels, .. } => channels,
            ActivationShape::Flat(n) => n,
        }
    }
}

/// A whole network: the shape of one input sample and the layers applied to it in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetSpec {
    /// Input sample shape `[channels, height, width]`.
    pub input_shape: [usize; 3],
    /// The layers, in `nn.Sequential` order.
    pub layers: Vec<LayerSpec>,
}

/// The most values one layer may produce per sample (2³²; far beyond any memory).
const MAX_ACTIVATION: usize = 1 << 32;

/// Names of the builtin architectures accepted by [`NetSpec::builtin`].
pub const BUILTIN_ARCHITECTURES: &[&str] = &["fc", "cnn-small", "cnn-medium", "cnn7"];

impl NetSpec {
    /// Reads a network description from a YAML file (`input_shape` and `layers`), validated.
    pub fn from_yaml_file(path: &std::path::Path) -> Result<NetSpec, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::SpecFile {
            path: path.to_path_buf(),
            problem: e.to_string(),
        })?;
        let spec: NetSpec = serde_saphyr::from_str(&text).map_err(|e| ModelError::SpecFile {
            path: path.to_path_buf(),
            problem: e.to_string(),
        })?;
        spec.activation_shapes().map_err(|e| ModelError::SpecFile {
            path: path.to_path_buf(),
            problem: e.to_string(),
        })?;
        Ok(spec)
    }

    /// Builds a builtin architecture (`fc`, `cnn-small`, `cnn-medium`, `cnn7`) for an input shape.
    ///
    /// `normalization` (per-channel mean and std) becomes a leading `Normalize` layer; MNIST-family
    /// data is used without one, CIFAR-10 with its dataset statistics.
    pub fn builtin(
        name: &str,
        input_shape: [usize; 3],
        num_classes: usize,
        normalization: Option<(Vec<f32>, Vec<f32>)>,
    ) -> Result<NetSpec, ModelError> {
        let conv = |out_channels, kernel_size, stride, padding| LayerSpec::Conv2d {
            out_channels,
            kernel_size,
            stride,
            padding,
        };
        let linear = |out_features| LayerSpec::Linear { out_features };
        use LayerSpec::{BatchNorm, Flatten, Relu};
        let body = match name {
            "fc" => vec![
                Flatten,
                linear(100),
                Relu,
                linear(100),
                Relu,
                linear(num_classes),
            ],
            "cnn-small" => vec![
                conv(16, 4, 2, 1),
                Relu,
                Flatten,
                linear(100),
                Relu,
                linear(num_classes),
            ],
            "cnn-medium" => vec![
                conv(16, 4, 2, 0),
                Relu,
                conv(32, 4, 1, 0),
                Relu,
                Flatten,
                linear(100),
                Relu,
                linear(num_classes),
            ],
            "cnn7" => vec![
                conv(64, 3, 1, 1),
                BatchNorm {},
                Relu,
                conv(64, 3, 1, 1),
                BatchNorm {},
                Relu,
                conv(128, 3, 2, 1),
                BatchNorm {},
                Relu,
                conv(128, 3, 1, 1),
                BatchNorm {},
                Relu,
                conv(128, 3, 1, 1),
                BatchNorm {},
                Relu,
                Flatten,
                linear(512),
                BatchNorm {},
                Relu,
                linear(num_classes),
            ],
            other => {
                return Err(ModelError::UnknownArchitecture {
                    name: other.to_string(),
                    known: BUILTIN_ARCHITECTURES.join(", "),
                });
            }
        };
        let mut layers = Vec::with_capacity(body.len() + 1);
        if let Some((mean, std)) = normalization {
            layers.push(LayerSpec::Normalize { mean, std });
        }
        layers.extend(body);
        let spec = NetSpec {
            input_shape,
            layers,
        };
        spec.activation_shapes()?;
        Ok(spec)
    }

    /// Shapes of the activations: entry `i` is the input of layer `i`, the last is the output.
    ///
    /// Fails with a message naming the layer when a layer does not fit its input.
    pub fn activation_shapes(&self) -> Result<Vec<ActivationShape>, ModelError> {
        let [channels, height, width] = self.input_shape;
        if channels == 0 || height == 0 || width == 0 {
            return Err(ModelError::InvalidSpec {
                layer: None,
                problem: format!("input shape {:?} has a zero dimension", self.input_shape),
            });
        }
        let mut shape = ActivationShape::Image {
            channels,
            height,
            width,
        };
        let mut shapes = vec![shape];
        for (index, layer) in self.layers.iter().enumerate() {
            let invalid = |problem: String| ModelError::InvalidSpec {
                layer: Some(index),
                problem,
            };
            shape = match (layer, shape) {
                (LayerSpec::Normalize { mean, std }, ActivationShape::Image { channels, .. }) => {
                    if mean.len() != channels || std.len() != channels {
                        return Err(invalid(format!(
                            "normalize has {} means and {} stds for {channels} channels",
                            mean.len(),
                            std.len()
                        )));
                    }
                    if std.iter().any(|s| !s.is_finite() || *s <= 0.0) {
                        return Err(invalid("normalize std must be finite and > 0".into()));
                    }
                    shape
                }
                (
                    LayerSpec::Conv2d {
                        out_channels,
                        kernel_size,
                        stride,
                        padding,
                    },
                    ActivationShape::Image { height, width, .. },
                ) => {
                    if *out_channels == 0 || *kernel_size == 0 || *stride == 0 {
                        return Err(invalid(
                            "conv2d out_channels, kernel_size and stride must be > 0".into(),
                        ));
                    }
                    let out = |size: usize| {
                        (size + 2 * padding)
                            .checked_sub(*kernel_size)
                            .map(|s| s / stride + 1)
                    };
                    match (out(height), out(width)) {
                        (Some(height), Some(width)) => ActivationShape::Image {
                            channels: *out_channels,
                            height,
                            width,
                        },
                        _ => {
                            return Err(invalid(format!(
                                "conv2d kernel {kernel_size} with padding {padding} does not fit a {height}x{width} input"
                            )));
                        }
                    }
                }
                (LayerSpec::Linear { out_features }, ActivationShape::Flat(_)) => {
                    if *out_features == 0 {
                        return Err(invalid("linear out_features must be > 0".into()));
                    }
                    ActivationShape::Flat(*out_features)
                }
                (LayerSpec::Relu, _) | (LayerSpec::BatchNorm {}, _) => shape,
                (LayerSpec::Flatten, _) => ActivationShape::Flat(shape.numel()),
                (LayerSpec::Linear { .. }, ActivationShape::Image { .. }) => {
                    return Err(invalid(
                        "linear layer needs flat input: add a flatten layer before it".into(),
                    ));
                }
                (_, ActivationShape::Flat(_)) => {
                    return Err(invalid(format!(
                        "{} layer needs image-shaped input but gets a flat vector",
                        layer.kind()
                    )));
                }
            };
            let values = match shape {
                ActivationShape::Image {
                    channels,
                    height,
                    width,
                } => channels
                    .checked_mul(height)
                    .and_then(|n| n.checked_mul(width)),
                ActivationShape::Flat(n) => Some(n),
            };
            if values.is_none_or(|n| n > MAX_ACTIVATION) {
                return Err(invalid(format!(
                    "{} layer produces more than {MAX_ACTIVATION} values per sample",
                    layer.kind()
                )));
            }
            shapes.push(shape);
        }
        match shape {
            ActivationShape::Flat(_) => Ok(shapes),
            ActivationShape::Image { .. } => Err(ModelError::InvalidSpec {
                layer: None,
                problem: "the network must end in a flat vector of logits (flatten + linear)"
                    .into(),
            }),
        }
    }

    /// Checks that `data`'s images (`actual`, named `dataset`) are the network's input shape.
    pub fn check_input_shape(&self, actual: [usize; 3], dataset: &str) -> Result<(), ModelError> {
        if self.input_shape == actual {
            Ok(())
        } else {
            Err(ModelError::InputShape {
                expected: self.input_shape,
                actual,
                dataset: dataset.to_string(),
            })
        }
    }

    /// Number of output classes (logits) of the network.
    pub fn num_classes(&self) -> Result<usize, ModelError> {
        Ok(self
            .activation_shapes()?
            .last()
            .map(ActivationShape::numel)
            .unwrap_or(0))
    }
}

impl LayerSpec {
    /// Short name of the layer kind, as written in YAML.
    pub fn kind(&self) -> &'static str {
        match self {
            LayerSpec::Normalize { .. } => "normalize",
            LayerSpec::Conv2d { .. } => "conv2d",
            LayerSpec::Linear { .. } => "linear",
            LayerSpec::Relu => "relu",
            LayerSpec::Flatten => "flatten",
            LayerSpec::BatchNorm {} => "batch_norm",
        }
    }
}
