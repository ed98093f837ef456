//! Per-channel affine maps `y = scale[c]·x + shift[c]` with a fast backward.
//!
//! candle reduces a gradient over the batch and spatial axes (what a broadcast per-channel
//! parameter needs) with a generic strided loop, ~30× slower than summing contiguous rows; conv
//! biases, BatchNorm and input normalisation all hit it. This op sums rows instead.

use super::{contiguous_f32, par_filled};
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, bail};

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
