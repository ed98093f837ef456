//! Convolutions as the reverse pass runs them: Winograd where it applies, im2col otherwise,
//! keeping the input in the form each kernel's backward reads.

use crate::kernels::{
    WinogradInput, conv_transpose2d, conv2d, conv2d_bias, conv2d_columns, conv2d_from_columns,
    conv2d_weight_gradient_from_columns, relu_masked_conv_transpose2d, winograd_conv2d,
    winograd_conv2d_input_gradient, winograd_conv2d_keeping_input,
    winograd_conv2d_weight_gradient_from, winograd_supports,
};
use crate::train::TrainError;
use candle_core::Tensor;

/// A convolution's input as its backward reads it, in the form the forward kernels built once
/// for the forward pass and the kernel gradient.
pub(super) struct ConvInput {
    /// Input height and width (the size of the input gradient).
    size: (usize, usize),
    kept: KeptInput,
}

impl ConvInput {
    /// Whether Winograd's kernels ran the forward pass (so its input gradient is theirs).
    fn ran_winograd(&self) -> bool {
        matches!(
            self.kept,
            KeptInput::Winograd(_) | KeptInput::Nothing { winograd: true }
        )
    }
}

/// Which kernels ran a convolution, with the input as they transformed it.
pub(super) enum KeptInput {
    /// Winograd, with the input in its transformed domain.
    Winograd(WinogradInput),
    /// im2col + gemm, with the im2col matrices.
    Columns(Tensor),
    /// Nothing kept: only the input gradient follows (an attack's pass), by Winograd's kernels
    /// or by im2col's.
    Nothing {
        /// Whether Winograd ran the forward pass.
        winograd: bool,
    },
}

/// A convolution (`bias` optional): Winograd where it applies, im2col otherwise; returns the
/// output and the input as the backward reads it (with `keep_input` false only as the input
/// gradient reads it: an attack's pass builds no im2col matrices for a kernel gradient).
pub(super) fn convolve(
    x: Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    (stride, padding): (usize, usize),
    keep_input: bool,
) -> Result<(Tensor, ConvInput), TrainError> {
    let (_, _, height, width) = x.dims4()?;
    let winograd = winograd_supports(x.dims(), weight.dims(), stride, padding);
    let (y, kept) = if !keep_input {
        let y = match (winograd, bias) {
            (true, bias) => winograd_conv2d(&x, weight, bias)?,
            (false, Some(bias)) => conv2d_bias(&x, weight, bias, stride, padding)?,
            (false, None) => conv2d(&x, weight, stride, padding)?,
        };
        (y, KeptInput::Nothing { winograd })
    } else if winograd {
        let (y, transformed) = winograd_conv2d_keeping_input(&x, weight, bias)?;
        (y, KeptInput::Winograd(transformed))
    } else {
        let size = weight.dim(2)?;
        let out = |length: usize| (length + 2 * padding).saturating_sub(size) / stride + 1;
        let columns = conv2d_columns(&x, size, stride, padding)?;
        let y = conv2d_from_columns(&columns, weight, bias, (out(height), out(width)))?;
        (y, KeptInput::Columns(columns))
    };
    let input = ConvInput {
        size: (height, width),
        kept,
    };
    Ok((y, input))
}

/// The input gradient of [`convolve`], by the kernels that ran its forward pass.
pub(super) fn input_gradient(
    g: &Tensor,
    weight: &Tensor,
    stride: usize,
    padding: usize,
    input: &ConvInput,
) -> Result<Tensor, TrainError> {
    let (height, width) = input.size;
    Ok(if input.ran_winograd() {
        winograd_conv2d_input_gradient(g, weight)?
    } else {
        conv_transpose2d(g, weight, stride, padding, height, width)?
    })
}

/// The input gradient of [`convolve`] from the gradient `g` of the ReLU after it, whose input
/// was `pre_activation`: the ReLU's mask folded into im2col's transposed convolution, one pass
/// less. `None` where Winograd's kernels ran the forward pass.
pub(super) fn relu_masked_input_gradient(
    g: &Tensor,
    pre_activation: &Tensor,
    weight: &Tensor,
    (stride, padding): (usize, usize),
    input: &ConvInput,
) -> Result<Option<Tensor>, TrainError> {
    if input.ran_winograd() {
        return Ok(None);
    }
    let gradient =
        relu_masked_conv_transpose2d(g, pre_activation, weight, (stride, padding), input.size)?;
    Ok(Some(gradient))
}

/// The kernel gradient of [`convolve`] from the input its forward pass kept.
pub(super) fn kernel_gradient(
    input: &ConvInput,
    g: &Tensor,
    size: usize,
) -> Result<Tensor, TrainError> {
    Ok(match &input.kept {
        KeptInput::Winograd(transformed) => winograd_conv2d_weight_gradient_from(transformed, g)?,
        KeptInput::Columns(columns) => conv2d_weight_gradient_from_columns(columns, g, size)?,
        KeptInput::Nothing { .. } => {
            return Err(TrainError::internal(
                "a kernel gradient from a pass that kept no convolution input".into(),
            ));
        }
    })
}
