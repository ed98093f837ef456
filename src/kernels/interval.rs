//! A ReLU applied to a box given by centre and radius, returning the centre or radius of the
//! image box, with a fused backward.
//!
//! IBP written with tensor ops turns `(c, r)` into `l = c − r`, `u = c + r`, applies two ReLUs
//! and turns the result back into a centre and a radius: eight element-wise nodes per ReLU, and
//! in the backward pass candle zeroes a buffer and adds into it for every input of every node.
//! These two ops do the same arithmetic in the same order (so the results are bit-identical)
//! as two nodes.

use super::{contiguous_f32, masked, par_filled};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

/// Elements per rayon task.
const CHUNK: usize = 1 << 14;

/// Which half of the image box an op returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// `(relu(u) + relu(l)) / 2`.
    Centre,
    /// `(relu(u) − relu(l)) / 2`.
    Radius,
}

impl Part {
    /// The sign of the lower bound's ReLU in this part: `+1` for the centre, `−1` for the radius.
    fn sign(self) -> f32 {
        match self {
            Part::Centre => 1.0,
            Part::Radius => -1.0,
        }
    }
}

/// The operands of a centre/radius op, checked to be equally long.
fn operands<'a>(
    c_storage: &'a CpuStorage,
    c_layout: &Layout,
    r_storage: &'a CpuStorage,
    r_layout: &Layout,
) -> Result<(&'a [f32], &'a [f32])> {
    let centre = contiguous_f32(c_storage, c_layout, "interval relu centre")?;
    let radius = contiguous_f32(r_storage, r_layout, "interval relu radius")?;
    if centre.len() != radius.len() {
        bail!(
            "interval relu: {} centres, {} radii",
            centre.len(),
            radius.len()
        )
    }
    Ok((centre, radius))
}

struct ReluIntervalOp(Part);

impl CustomOp2 for ReluIntervalOp {
    fn name(&self) -> &'static str {
        "cthpo-relu-interval"
    }

    fn cpu_fwd(
        &self,
        c_storage: &CpuStorage,
        c_layout: &Layout,
        r_storage: &CpuStorage,
        r_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (centre, radius) = operands(c_storage, c_layout, r_storage, r_layout)?;
        // `upper ± lower` as `upper + sign·lower` (exact), so the loop has no branch.
        let sign = self.0.sign();
        // SAFETY: each output chunk is zipped with input slices at least as long.
        let out = unsafe {
            par_filled(centre.len(), CHUNK, |index, out| {
                let start = index * CHUNK;
                for ((out, c), r) in out.iter_mut().zip(&centre[start..]).zip(&radius[start..]) {
                    let upper = (c + r).max(0.0);
                    let lower = (c - r).max(0.0);
                    out.write((upper + sign * lower) * 0.5);
                }
            })
        };
        Ok((CpuStorage::F32(out), c_layout.shape().clone()))
    }

    fn bwd(
        &self,
        centre: &Tensor,
        radius: &Tensor,
        _result: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let both = centre.detach().apply_op3_no_bwd(
            &radius.detach(),
            &grad.contiguous()?,
            &ReluIntervalGradientOp(self.0),
        )?;
        let grad_centre = centre.track_op().then(|| both.get(0)).transpose()?;
        let grad_radius = radius.track_op().then(|| both.get(1)).transpose()?;
        Ok((grad_centre, grad_radius))
    }
}

/// Gradients with respect to centre and radius, stacked as `[2, …]`.
///
/// With `a = [u ≥ 0]` and `b = [l ≥ 0]` (the subgradient of our ReLU) and `g` the gradient of
/// the output: centre output `∂c = g(a + b)/2`, `∂r = g(a − b)/2`; radius output
/// `∂c = g(a − b)/2`, `∂r = g(a + b)/2`.
struct ReluIntervalGradientOp(Part);

impl CustomOp3 for ReluIntervalGradientOp {
    fn name(&self) -> &'static str {
        "cthpo-relu-interval-gradient"
    }

    fn cpu_fwd(
        &self,
        c_storage: &CpuStorage,
        c_layout: &Layout,
        r_storage: &CpuStorage,
        r_layout: &Layout,
        g_storage: &CpuStorage,
        g_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (centre, radius) = operands(c_storage, c_layout, r_storage, r_layout)?;
        let grad = contiguous_f32(g_storage, g_layout, "interval relu gradient")?;
        if grad.len() != centre.len() {
            bail!(
                "interval relu gradient: {} gradients for {} elements",
                grad.len(),
                centre.len()
            )
        }
        let n = centre.len();
        let mut out: Vec<f32> = Vec::with_capacity(2 * n);
        let (grad_centre, grad_radius) = out.spare_capacity_mut()[..2 * n].split_at_mut(n);
        let sign = self.0.sign();
        grad_centre
            .par_chunks_mut(CHUNK)
            .zip(grad_radius.par_chunks_mut(CHUNK))
            .enumerate()
            .for_each(|(index, (dc, dr))| {
                let start = index * CHUNK;
                let inputs = centre[start..]
                    .iter()
                    .zip(&radius[start..])
                    .zip(&grad[start..]);
                for ((dc, dr), ((c, r), g)) in dc.iter_mut().zip(dr.iter_mut()).zip(inputs) {
                    let half = g * 0.5;
                    let through_upper = masked(half, c + r >= 0.0);
                    let through_lower = masked(half, c - r >= 0.0);
                    // Centre: (u + l, u − l); radius: (u − l, u + l).
                    let (sum, difference) = (
                        through_upper + sign * through_lower,
                        through_upper - sign * through_lower,
                    );
                    dc.write(sum);
                    dr.write(difference);
                }
            });
        // SAFETY: both halves were written element by element above.
        unsafe { out.set_len(2 * n) };
        let mut dims = vec![2];
        dims.extend_from_slice(c_layout.shape().dims());
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }
}

/// Centre `(relu(c + r) + relu(c − r)) / 2` of the ReLU image of the box `c ± r`;
/// differentiable in both.
pub fn relu_box_centre(centre: &Tensor, radius: &Tensor) -> Result<Tensor> {
    centre
        .contiguous()?
        .apply_op2(&radius.contiguous()?, ReluIntervalOp(Part::Centre))
}

/// Radius `(relu(c + r) − relu(c − r)) / 2` of the ReLU image of the box `c ± r`;
/// differentiable in both.
pub fn relu_box_radius(centre: &Tensor, radius: &Tensor) -> Result<Tensor> {
    centre
        .contiguous()?
        .apply_op2(&radius.contiguous()?, ReluIntervalOp(Part::Radius))
}
