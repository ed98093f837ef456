//! Per-channel affine maps `y = scale[c]·x + shift[c]` with a fast backward.
//!
//! candle reduces a gradient over the batch and spatial axes (what a broadcast per-channel
//! parameter needs) with a generic strided loop, ~30× slower than summing contiguous rows; conv
//! biases, BatchNorm and input normalisation all hit it. This op sums rows instead.

use super::{contiguous_f32, masked, par_filled};
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

struct ChannelAffineOp;

impl CustomOp3 for ChannelAffineOp {
    fn name(&self) -> &'static str {
        "cthpo-channel-affine"
    }

    fn cpu_fwd(
        &self,
        x_storage: &CpuStorage,
        x_layout: &Layout,
        scale_storage: &CpuStorage,
        scale_layout: &Layout,
        shift_storage: &CpuStorage,
        shift_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(x_storage, x_layout, "channel affine input")?;
        let scale = contiguous_f32(scale_storage, scale_layout, "channel affine scale")?;
        let shift = contiguous_f32(shift_storage, shift_layout, "channel affine shift")?;
        let dims = x_layout.shape().dims();
        if dims.len() < 2 || dims[1] != scale.len() || dims[1] != shift.len() {
            bail!(
                "channel affine: {} scales and {} shifts for input {:?}",
                scale.len(),
                shift.len(),
                dims
            )
        }
        let channels = dims[1];
        let plane: usize = dims[2..].iter().product();
        let plane = plane.max(1);
        // SAFETY: each output row is zipped with the input row of the same length.
        let out = unsafe {
            par_filled(x.len(), plane, |row, y| {
                let c = row % channels;
                let (a, b) = (scale[c], shift[c]);
                for (y, x) in y.iter_mut().zip(&x[row * plane..]) {
                    y.write(a * x + b);
                }
            })
        };
        Ok((CpuStorage::F32(out), x_layout.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        scale: &Tensor,
        shift: &Tensor,
        _result: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let grad_x = if x.track_op() {
            Some(channel_affine(&grad, scale, &shift.zeros_like()?)?)
        } else {
            None
        };
        let grad_scale = if scale.track_op() {
            Some(channel_sum(&(&grad * x)?)?)
        } else {
            None
        };
        let grad_shift = if shift.track_op() {
            Some(channel_sum(&grad)?)
        } else {
            None
        };
        Ok((grad_x, grad_scale, grad_shift))
    }
}

/// `max(scale[c]·x + shift[c], 0)`: BatchNorm and the ReLU after it as one op.
///
/// Fusing saves the ReLU's pass over the activations and, in the backward pass, the
/// accumulation candle does for every intermediate gradient (a zeroed buffer plus an add).
struct ChannelAffineReluOp;

impl CustomOp3 for ChannelAffineReluOp {
    fn name(&self) -> &'static str {
        "cthpo-channel-affine-relu"
    }

    fn cpu_fwd(
        &self,
        x_storage: &CpuStorage,
        x_layout: &Layout,
        scale_storage: &CpuStorage,
        scale_layout: &Layout,
        shift_storage: &CpuStorage,
        shift_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (out, shape) = ChannelAffineOp.cpu_fwd(
            x_storage,
            x_layout,
            scale_storage,
            scale_layout,
            shift_storage,
            shift_layout,
        )?;
        let CpuStorage::F32(mut values) = out else {
            bail!("channel affine relu: only f32 tensors are supported")
        };
        values
            .par_chunks_mut(1 << 14)
            .for_each(|chunk| chunk.iter_mut().for_each(|v| *v = v.max(0.0)));
        Ok((CpuStorage::F32(values), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        scale: &Tensor,
        shift: &Tensor,
        result: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let parameters = Tensor::stack(&[scale.detach(), shift.detach()], 0)?;
        let masked_grad =
            x.detach()
                .apply_op3_no_bwd(&parameters, &grad.contiguous()?, &ReluMaskOp)?;
        ChannelAffineOp.bwd(x, scale, shift, result, &masked_grad)
    }
}

/// `grad · [scale[c]·x + shift[c] ≥ 0]` from `(x, [scale; shift], grad)`: the gradient at the
/// pre-activation, with the subgradient candle's `relu` uses at zero.
struct ReluMaskOp;

impl CustomOp3 for ReluMaskOp {
    fn name(&self) -> &'static str {
        "cthpo-channel-affine-relu-mask"
    }

    fn cpu_fwd(
        &self,
        x_storage: &CpuStorage,
        x_layout: &Layout,
        p_storage: &CpuStorage,
        p_layout: &Layout,
        g_storage: &CpuStorage,
        g_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(x_storage, x_layout, "channel affine relu input")?;
        let parameters = contiguous_f32(p_storage, p_layout, "channel affine relu parameters")?;
        let grad = contiguous_f32(g_storage, g_layout, "channel affine relu gradient")?;
        let dims = x_layout.shape().dims();
        let channels = dims[1];
        if parameters.len() != 2 * channels || grad.len() != x.len() {
            bail!("channel affine relu gradient: operands do not fit input {dims:?}")
        }
        let (scale, shift) = parameters.split_at(channels);
        let plane = dims[2..].iter().product::<usize>().max(1);
        // SAFETY: each output row is zipped with input and gradient rows of the same length.
        let out = unsafe {
            par_filled(x.len(), plane, |row, d| {
                let c = row % channels;
                let (a, b) = (scale[c], shift[c]);
                let start = row * plane;
                for ((d, x), g) in d.iter_mut().zip(&x[start..]).zip(&grad[start..]) {
                    d.write(masked(*g, a * x + b >= 0.0));
                }
            })
        };
        Ok((CpuStorage::F32(out), x_layout.shape().clone()))
    }
}

/// Sum over every axis but axis 1 of a `[B, C, …]` tensor, as contiguous row sums.
pub(super) fn channel_sum(t: &Tensor) -> Result<Tensor> {
    let dims = t.dims();
    let plane: usize = dims[2..].iter().product();
    t.contiguous()?
        .reshape((dims[0], dims[1], plane))?
        .sum(2)?
        .sum(0)
}

/// `scale[c]·x + shift[c]` over axis 1 of `x` (`[B, C]` or `[B, C, H, W]`); `scale` and `shift`
/// are `[C]`. Differentiable in all three.
pub fn channel_affine(x: &Tensor, scale: &Tensor, shift: &Tensor) -> Result<Tensor> {
    x.contiguous()?
        .apply_op3(&scale.contiguous()?, &shift.contiguous()?, ChannelAffineOp)
}

/// `max(scale[c]·x + shift[c], 0)` over axis 1 of `x`, the same as [`channel_affine`] followed
/// by a ReLU; differentiable in all three.
pub fn channel_affine_relu(x: &Tensor, scale: &Tensor, shift: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op3(
        &scale.contiguous()?,
        &shift.contiguous()?,
        ChannelAffineReluOp,
    )
}
