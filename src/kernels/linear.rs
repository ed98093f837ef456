//! Fully connected layers as single ops: `x·Wᵀ + b` and IBP's radius map `r·|W|ᵀ`.
//!
//! Written with tensor ops, a linear layer is four graph nodes (a transposed view of `W`, the
//! product, the broadcast bias, the sum); in the backward pass candle accumulates the weight
//! gradient through the transposed view with a strided element-wise add, and IBP's `|W|`
//! adds an absolute value and its sign mask over the whole weight matrix. Here each map is one
//! node whose backward writes the input, weight and bias gradients directly with `gemm`.
//! Inputs of any rank are read as `[B, features]`, so a preceding flatten needs no node either.

use super::{contiguous_f32, matmul, matmul_new};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

/// Rows (batch), input features and output features of `x` against `weight` `[out, in]`.
fn sizes(x: &Layout, weight: &Layout) -> Result<(usize, usize, usize)> {
    let dims = x.shape().dims();
    let (outputs, inputs) = weight.shape().dims2()?;
    let Some((&batch, rest)) = dims.split_first() else {
        bail!("linear: input is a scalar")
    };
    let features: usize = rest.iter().product();
    if features != inputs {
        bail!("linear: input {dims:?} has {features} features, weight expects {inputs}")
    }
    Ok((batch, inputs, outputs))
}

/// `x·Wᵀ` into a new `[batch, outputs]` buffer, starting from `seed` rows when given.
fn forward(
    x: &[f32],
    weight: &[f32],
    (batch, inputs, outputs): (usize, usize, usize),
    seed: Option<&[f32]>,
) -> Vec<f32> {
    // Wᵀ is read through strides: element (i, o) of Wᵀ is W[o, i].
    let size = (batch, outputs, inputs);
    match seed {
        Some(bias) => {
            let mut y = bias.repeat(batch);
            matmul(
                &mut y,
                true,
                size,
                x,
                (inputs, 1),
                weight,
                (1, inputs),
                true,
            );
            y
        }
        None => matmul_new(size, x, (inputs, 1), weight, (1, inputs), true),
    }
}

struct LinearOp;

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "cthpo-linear"
    }

    fn cpu_fwd(
        &self,
        x_storage: &CpuStorage,
        x_layout: &Layout,
        w_storage: &CpuStorage,
        w_layout: &Layout,
        b_storage: &CpuStorage,
        b_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let size = sizes(x_layout, w_layout)?;
        let x = contiguous_f32(x_storage, x_layout, "linear input")?;
        let weight = contiguous_f32(w_storage, w_layout, "linear weight")?;
        let bias = contiguous_f32(b_storage, b_layout, "linear bias")?;
        if bias.len() != size.2 {
            bail!("linear: {} biases for {} outputs", bias.len(), size.2)
        }
        let y = forward(x, weight, size, Some(bias));
        Ok((CpuStorage::F32(y), Shape::from((size.0, size.2))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        _result: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let grad_x = if x.track_op() {
            Some(input_gradient(&grad, weight, x.dims())?)
        } else {
            None
        };
        let grad_weight = if weight.track_op() {
            Some(x.apply_op2_no_bwd(&grad, &WeightGradientOp)?)
        } else {
            None
        };
        let grad_bias = if bias.track_op() {
            Some(grad.sum(0)?)
        } else {
            None
        };
        Ok((grad_x, grad_weight, grad_bias))
    }
}

/// `r·|W|ᵀ`, the radius of the image of a box of radius `r` under `x ↦ x·Wᵀ + b`, from
/// `(r, W, |W|)`: `|W|` is formed once by the caller and read by both passes.
struct AbsLinearOp;

impl CustomOp3 for AbsLinearOp {
    fn name(&self) -> &'static str {
        "cthpo-abs-linear"
    }

    fn cpu_fwd(
        &self,
        r_storage: &CpuStorage,
        r_layout: &Layout,
        _w_storage: &CpuStorage,
        _w_layout: &Layout,
        a_storage: &CpuStorage,
        a_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let size = sizes(r_layout, a_layout)?;
        let radius = contiguous_f32(r_storage, r_layout, "abs linear radius")?;
        let absolute = contiguous_f32(a_storage, a_layout, "abs linear |weight|")?;
        let y = forward(radius, absolute, size, None);
        Ok((CpuStorage::F32(y), Shape::from((size.0, size.2))))
    }

    fn bwd(
        &self,
        radius: &Tensor,
        weight: &Tensor,
        absolute: &Tensor,
        _result: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let grad_radius = if radius.track_op() {
            Some(input_gradient(&grad, absolute, radius.dims())?)
        } else {
            None
        };
        let grad_weight = if weight.track_op() {
            Some(radius.apply_op3_no_bwd(&grad, weight, &AbsWeightGradientOp)?)
        } else {
            None
        };
        // `|W|` is an untracked copy: its gradient reaches `W` through `grad_weight`.
        Ok((grad_radius, grad_weight, None))
    }
}

/// `g·W` reshaped to the input's dimensions.
fn input_gradient(grad: &Tensor, weight: &Tensor, dims: &[usize]) -> Result<Tensor> {
    grad.apply_op2_no_bwd(&weight.contiguous()?, &ProductOp)?
        .reshape(dims)
}

/// `g·W` for `g` `[B, out]` and `W` `[out, in]`.
struct ProductOp;

impl CustomOp2 for ProductOp {
    fn name(&self) -> &'static str {
        "cthpo-linear-input-gradient"
    }

    fn cpu_fwd(
        &self,
        g_storage: &CpuStorage,
        g_layout: &Layout,
        w_storage: &CpuStorage,
        w_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (batch, outputs) = g_layout.shape().dims2()?;
        let (weight_outputs, inputs) = w_layout.shape().dims2()?;
        if weight_outputs != outputs {
            bail!(
                "linear input gradient: {outputs} gradients per row, weight has {weight_outputs} rows"
            )
        }
        let grad = contiguous_f32(g_storage, g_layout, "linear gradient")?;
        let weight = contiguous_f32(w_storage, w_layout, "linear weight")?;
        let dx = matmul_new(
            (batch, inputs, outputs),
            grad,
            (outputs, 1),
            weight,
            (inputs, 1),
            true,
        );
        Ok((CpuStorage::F32(dx), Shape::from((batch, inputs))))
    }
}

/// `gᵀ·x`, the weight gradient `[out, in]` from inputs `x` `[B, in]` and gradients `g` `[B, out]`.
fn weight_gradient(
    x: &[f32],
    grad: &[f32],
    (batch, inputs, outputs): (usize, usize, usize),
) -> Vec<f32> {
    // gᵀ is read through strides: element (o, b) of gᵀ is g[b, o].
    matmul_new(
        (outputs, inputs, batch),
        grad,
        (1, outputs),
        x,
        (inputs, 1),
        true,
    )
}

/// Rows, input features and output features of a linear layer.
type LinearSizes = (usize, usize, usize);

/// Checked operands of a weight gradient: inputs and gradients, and the three sizes.
fn weight_gradient_operands<'a>(
    x_storage: &'a CpuStorage,
    x_layout: &Layout,
    g_storage: &'a CpuStorage,
    g_layout: &Layout,
) -> Result<(&'a [f32], &'a [f32], LinearSizes)> {
    let x = contiguous_f32(x_storage, x_layout, "linear input")?;
    let grad = contiguous_f32(g_storage, g_layout, "linear gradient")?;
    let (batch, outputs) = g_layout.shape().dims2()?;
    if batch == 0 || x.len() % batch != 0 {
        bail!(
            "linear weight gradient: {} inputs for {batch} rows",
            x.len()
        )
    }
    Ok((x, grad, (batch, x.len() / batch, outputs)))
}

struct WeightGradientOp;

impl CustomOp2 for WeightGradientOp {
    fn name(&self) -> &'static str {
        "cthpo-linear-weight-gradient"
    }

    fn cpu_fwd(
        &self,
        x_storage: &CpuStorage,
        x_layout: &Layout,
        g_storage: &CpuStorage,
        g_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, grad, size) = weight_gradient_operands(x_storage, x_layout, g_storage, g_layout)?;
        let dw = weight_gradient(x, grad, size);
        Ok((CpuStorage::F32(dw), Shape::from((size.2, size.1))))
    }
}

/// `sign(W) ⊙ gᵀ·r`: the weight gradient through `|W|`, with candle's `sign(0) = +1`.
struct AbsWeightGradientOp;

impl CustomOp3 for AbsWeightGradientOp {
    fn name(&self) -> &'static str {
        "cthpo-abs-linear-weight-gradient"
    }

    fn cpu_fwd(
        &self,
        r_storage: &CpuStorage,
        r_layout: &Layout,
        g_storage: &CpuStorage,
        g_layout: &Layout,
        w_storage: &CpuStorage,
        w_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (radius, grad, size) =
            weight_gradient_operands(r_storage, r_layout, g_storage, g_layout)?;
        let weight = contiguous_f32(w_storage, w_layout, "abs linear weight")?;
        if weight.len() != size.1 * size.2 {
            bail!(
                "abs linear weight gradient: weight has {} elements",
                weight.len()
            )
        }
        let mut dw = weight_gradient(radius, grad, size);
        dw.par_chunks_mut(1 << 14)
            .zip(weight.par_chunks(1 << 14))
            .for_each(|(dw, w)| {
                for (d, w) in dw.iter_mut().zip(w) {
                    // Flip the sign bit where W < 0 (sign(0) = +1, as candle's abs has it).
                    *d = f32::from_bits(d.to_bits() ^ (u32::from(*w < 0.0) << 31));
                }
            });
        Ok((CpuStorage::F32(dw), Shape::from((size.2, size.1))))
    }
}

/// `x·Wᵀ + b` for `x` `[B, …]` (read as `[B, in]`), `W` `[out, in]`, `b` `[out]`;
/// differentiable in all three.
pub fn linear(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    x.contiguous()?
        .apply_op3(&weight.contiguous()?, &bias.contiguous()?, LinearOp)
}

/// `r·|W|ᵀ` for `r` `[B, …]` (read as `[B, in]`) and `W` `[out, in]`; differentiable in both.
pub fn abs_linear(radius: &Tensor, weight: &Tensor) -> Result<Tensor> {
    let weight = weight.contiguous()?;
    let absolute = weight.detach().abs()?;
    radius
        .contiguous()?
        .apply_op3(&weight, &absolute, AbsLinearOp)
}

/// `g·W` reshaped to `dims`: the input gradient of [`linear`], graph-free (for hand-written
/// reverse passes; pass `|W|` for the radius gradient of [`abs_linear`]).
pub fn linear_input_gradient(grad: &Tensor, weight: &Tensor, dims: &[usize]) -> Result<Tensor> {
    input_gradient(&grad.contiguous()?, weight, dims)
}

/// `gᵀ·x` `[out, in]`: the weight gradient of [`linear`] for input `x` `[B, …]`, graph-free.
pub fn linear_weight_gradient(x: &Tensor, grad: &Tensor) -> Result<Tensor> {
    x.contiguous()?
        .apply_op2_no_bwd(&grad.contiguous()?, &WeightGradientOp)
}

/// `sign(W) ⊙ gᵀ·r`: the weight gradient of [`abs_linear`] for radius `r`, graph-free.
pub fn abs_linear_weight_gradient(
    radius: &Tensor,
    grad: &Tensor,
    weight: &Tensor,
) -> Result<Tensor> {
    radius.contiguous()?.apply_op3_no_bwd(
        &grad.contiguous()?,
        &weight.contiguous()?,
        &AbsWeightGradientOp,
    )
}
