//! Per-channel affine maps `y = scale[c]·x + shift[c]` with a fast backward.
//!
//! candle reduces a gradient over the batch and spatial axes (what a broadcast per-channel
//! parameter needs) with a generic strided loop, ~30× slower than summing contiguous rows; conv
//! biases, BatchNorm and input normalisation all hit it. This op sums rows instead.

use super::{contiguous_f32, masked, par_filled};
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// `scale[c]·x + shift[c]`, followed by a ReLU in the same pass when `relu` (BatchNorm and
/// the ReLU after it as one op).
///
/// Fusing saves the ReLU's pass over the activations and, in the backward pass, the
/// accumulation candle does for every intermediate gradient (a zeroed buffer plus an add).
struct ChannelAffineOp {
    relu: bool,
}

/// One channel row of [`ChannelAffineOp`]; `RELU` is a constant so the loop has no branch.
#[inline]
fn affine_row<const RELU: bool>(y: &mut [MaybeUninit<f32>], x: &[f32], a: f32, b: f32) {
    for (y, x) in y.iter_mut().zip(x) {
        let value = a * x + b;
        y.write(if RELU { value.max(0.0) } else { value });
    }
}

impl CustomOp3 for ChannelAffineOp {
    fn name(&self) -> &'static str {
        if self.relu {
            "cthpo-channel-affine-relu"
        } else {
            "cthpo-channel-affine"
        }
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
        let relu = self.relu;
        // SAFETY: each output row is zipped with the input row of the same length.
        let out = unsafe {
            par_filled(x.len(), plane, |row, y| {
                let c = row % channels;
                let x = &x[row * plane..];
                if relu {
                    affine_row::<true>(y, x, scale[c], shift[c]);
                } else {
                    affine_row::<false>(y, x, scale[c], shift[c]);
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
        affine_backward(x, scale, shift, grad, self.relu)
    }
}

/// Gradients of `y = scale[c]·x + shift[c]` (optionally followed by a ReLU) with respect to
/// `x`, `scale` and `shift`, from one pass over `x` and the output gradient.
fn affine_backward(
    x: &Tensor,
    scale: &Tensor,
    shift: &Tensor,
    grad: &Tensor,
    relu: bool,
) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    let (grad_x, grad_scale, grad_shift) = channel_affine_gradient(x, scale, shift, grad, relu)?;
    Ok((
        x.track_op().then_some(grad_x),
        scale.track_op().then_some(grad_scale),
        shift.track_op().then_some(grad_shift),
    ))
}

/// From `(x, [scale; shift], grad)`: `[∂x (all of x); ∂scale (C); ∂shift (C)]` in one buffer.
///
/// With `relu`, the gradient is first masked by `[scale[c]·x + shift[c] ≥ 0]` (the
/// subgradient candle's `relu` uses). Written with tensor ops this is a mask, a product and
/// two strided reductions, each a full pass with its own temporary; here it is one pass.
struct AffineGradientOp {
    relu: bool,
}

impl CustomOp3 for AffineGradientOp {
    fn name(&self) -> &'static str {
        "cthpo-channel-affine-gradient"
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
        let x = contiguous_f32(x_storage, x_layout, "channel affine input")?;
        let parameters = contiguous_f32(p_storage, p_layout, "channel affine parameters")?;
        let grad = contiguous_f32(g_storage, g_layout, "channel affine gradient")?;
        let dims = x_layout.shape().dims();
        if dims.len() < 2 || dims[1] == 0 {
            bail!("channel affine gradient: input {dims:?} has no channel axis")
        }
        let channels = dims[1];
        if parameters.len() != 2 * channels || grad.len() != x.len() {
            bail!("channel affine gradient: operands do not fit input {dims:?}")
        }
        let (scale, shift) = parameters.split_at(channels);
        let plane = dims[2..].iter().product::<usize>();
        let sample = (channels * plane).max(1);
        let relu = self.relu;
        let mut out: Vec<f32> = Vec::with_capacity(x.len() + 2 * channels);
        // Per-sample, per-channel partial sums [Σ g·x, Σ g], reduced in f64 below.
        let mut sums = vec![[0f32; 2]; x.len() / sample * channels];
        out.spare_capacity_mut()[..x.len()]
            .par_chunks_mut(sample)
            .zip(x.par_chunks(sample))
            .zip(grad.par_chunks(sample))
            .zip(sums.par_chunks_mut(channels))
            .for_each(|(((dx, x), grad), sums)| {
                let rows = dx.chunks_mut(plane.max(1)).zip(x.chunks(plane.max(1)));
                for (c, ((dx, x), sum)) in rows.zip(sums.iter_mut()).enumerate() {
                    let grad = &grad[c * plane..c * plane + x.len()];
                    let (a, b) = (scale[c], shift[c]);
                    *sum = if relu {
                        affine_gradient_row::<true>(dx, x, grad, a, b)
                    } else {
                        affine_gradient_row::<false>(dx, x, grad, a, b)
                    };
                }
            });
        // SAFETY: every sample's chunk of ∂x was written above.
        unsafe { out.set_len(x.len()) };
        let mut grad_scale = vec![0f64; channels];
        let mut grad_shift = vec![0f64; channels];
        for row in sums.chunks(channels) {
            for (c, [weighted, total]) in row.iter().enumerate() {
                grad_scale[c] += f64::from(*weighted);
                grad_shift[c] += f64::from(*total);
            }
        }
        out.extend(grad_scale.iter().chain(&grad_shift).map(|&v| v as f32));
        let len = out.len();
        Ok((CpuStorage::F32(out), Shape::from(len)))
    }
}

/// One channel row of [`AffineGradientOp`]: writes `∂x = a·g'` and returns `[Σ g'·x, Σ g']`,
/// where `g'` is `g` masked by `[a·x + b ≥ 0]` when `RELU`.
///
/// `RELU` is a constant so the element loop has no branch and vectorises; eight independent
/// accumulators over fixed-size chunks let it, and the tail goes into lane 0.
#[inline]
fn affine_gradient_row<const RELU: bool>(
    dx: &mut [MaybeUninit<f32>],
    x: &[f32],
    grad: &[f32],
    a: f32,
    b: f32,
) -> [f32; 2] {
    let (mut weighted, mut total) = ([0f32; 8], [0f32; 8]);
    let whole = x.len() / 8 * 8;
    let (dx_body, dx_tail) = dx.split_at_mut(whole);
    let (x_body, x_tail) = x.split_at(whole);
    let (g_body, g_tail) = grad.split_at(whole);
    let step = |g: f32, x: f32| if RELU { masked(g, a * x + b >= 0.0) } else { g };
    for ((dx, x), g) in dx_body
        .chunks_exact_mut(8)
        .zip(x_body.chunks_exact(8))
        .zip(g_body.chunks_exact(8))
    {
        for lane in 0..8 {
            let g = step(g[lane], x[lane]);
            dx[lane].write(g * a);
            weighted[lane] += g * x[lane];
            total[lane] += g;
        }
    }
    for ((dx, x), g) in dx_tail.iter_mut().zip(x_tail).zip(g_tail) {
        let g = step(*g, *x);
        dx.write(g * a);
        weighted[0] += g * x;
        total[0] += g;
    }
    [weighted.iter().sum(), total.iter().sum()]
}

/// Sum over every axis but axis 1 of a `[B, C, …]` tensor, as contiguous row sums.
pub fn channel_sum(t: &Tensor) -> Result<Tensor> {
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
    x.contiguous()?.apply_op3(
        &scale.contiguous()?,
        &shift.contiguous()?,
        ChannelAffineOp { relu: false },
    )
}

/// `max(scale[c]·x + shift[c], 0)` over axis 1 of `x`, the same as [`channel_affine`] followed
/// by a ReLU; differentiable in all three.
pub fn channel_affine_relu(x: &Tensor, scale: &Tensor, shift: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op3(
        &scale.contiguous()?,
        &shift.contiguous()?,
        ChannelAffineOp { relu: true },
    )
}

/// Input, scale and shift gradients of [`channel_affine`] (or [`channel_affine_relu`] when
/// `relu`) at input `x`, graph-free: `(∂x, ∂scale, ∂shift)`.
pub fn channel_affine_gradient(
    x: &Tensor,
    scale: &Tensor,
    shift: &Tensor,
    grad: &Tensor,
    relu: bool,
) -> Result<(Tensor, Tensor, Tensor)> {
    let parameters = Tensor::stack(&[scale.detach(), shift.detach()], 0)?;
    let packed = x.detach().contiguous()?.apply_op3_no_bwd(
        &parameters,
        &grad.contiguous()?,
        &AffineGradientOp { relu },
    )?;
    let (len, channels) = (x.elem_count(), scale.elem_count());
    Ok((
        packed.narrow(0, 0, len)?.reshape(x.dims())?,
        packed.narrow(0, len, channels)?,
        packed.narrow(0, len + channels, channels)?,
    ))
}
