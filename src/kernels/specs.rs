//! `a[b, s, …] · v[b, …]`: per-sample factors shared by every specification row, with a fast
//! backward.
//!
//! CROWN multiplies coefficient tensors `[B, S, …]` by ReLU slopes `[B, …]`. Written as a candle
//! broadcast, the slope gradient is a strided reduction over the spec axis, which dominated the
//! backward pass of CROWN-IBP training; here it is a contiguous loop.

use super::contiguous_f32;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

/// Forward: `out[b, s, d] = a[b, s, d] · v[b, d]`.
struct SpecMulOp;

/// Spec reduction: `out[b, d] = Σ_s a[b, s, d] · g[b, s, d]` (no gradient needed).
struct SpecDotOp;

/// Batch, spec and per-spec sizes of `a` `[B, S, …]` against `v` `[B, …]`.
fn sizes(a: &Layout, v: &Layout) -> Result<(usize, usize, usize)> {
    let a_dims = a.shape().dims();
    let v_dims = v.shape().dims();
    if a_dims.len() < 2 || a_dims.len() != v_dims.len() + 1 || a_dims[0] != v_dims[0] {
        bail!("spec multiply: {a_dims:?} against {v_dims:?}")
    }
    if a_dims[2..] != v_dims[1..] {
        bail!("spec multiply: {a_dims:?} against {v_dims:?}")
    }
    Ok((a_dims[0], a_dims[1], a_dims[2..].iter().product()))
}

impl CustomOp2 for SpecMulOp {
    fn name(&self) -> &'static str {
        "cthpo-spec-mul"
    }

    fn cpu_fwd(
        &self,
        a_storage: &CpuStorage,
        a_layout: &Layout,
        v_storage: &CpuStorage,
        v_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, specs, per_spec) = sizes(a_layout, v_layout)?;
        let a = contiguous_f32(a_storage, a_layout, "spec multiply")?;
        let v = contiguous_f32(v_storage, v_layout, "spec multiply factors")?;
        let mut out = vec![0f32; a.len()];
        out.par_chunks_mut(per_spec.max(1))
            .zip(a.par_chunks(per_spec.max(1)))
            .enumerate()
            .for_each(|(row, (out, a))| {
                let factors = &v[(row / specs) * per_spec..][..per_spec];
                for ((o, a), f) in out.iter_mut().zip(a).zip(factors) {
                    *o = a * f;
                }
            });
        Ok((CpuStorage::F32(out), a_layout.shape().clone()))
    }

    fn bwd(
        &self,
        a: &Tensor,
        v: &Tensor,
        _result: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let grad_a = if a.track_op() {
            Some(spec_mul(&grad, v)?)
        } else {
            None
        };
        let grad_v = if v.track_op() {
            Some(a.contiguous()?.apply_op2_no_bwd(&grad, &SpecDotOp)?)
        } else {
            None
        };
        Ok((grad_a, grad_v))
    }
}

impl CustomOp2 for SpecDotOp {
    fn name(&self) -> &'static str {
        "cthpo-spec-dot"
    }

    fn cpu_fwd(
        &self,
        a_storage: &CpuStorage,
        a_layout: &Layout,
        g_storage: &CpuStorage,
        g_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if a_layout.shape() != g_layout.shape() {
            bail!("spec dot: {:?} vs {:?}", a_layout.shape(), g_layout.shape())
        }
        let dims = a_layout.shape().dims();
        let (batch, specs) = (dims[0], dims[1]);
        let per_spec: usize = dims[2..].iter().product();
        let a = contiguous_f32(a_storage, a_layout, "spec dot")?;
        let g = contiguous_f32(g_storage, g_layout, "spec dot gradient")?;
        let mut out = vec![0f32; batch * per_spec];
        out.par_chunks_mut(per_spec.max(1))
            .enumerate()
            .for_each(|(b, out)| {
                for s in 0..specs {
                    let offset = (b * specs + s) * per_spec;
                    let (a, g) = (&a[offset..][..per_spec], &g[offset..][..per_spec]);
                    for ((o, a), g) in out.iter_mut().zip(a).zip(g) {
                        *o += a * g;
                    }
                }
            });
        let mut out_dims = vec![batch];
        out_dims.extend(&dims[2..]);
        Ok((CpuStorage::F32(out), Shape::from(out_dims)))
    }
}

/// `a[b, s, …] · v[b, …]` for `a` `[B, S, …]` and `v` `[B, …]`; differentiable in both.
pub fn spec_mul(a: &Tensor, v: &Tensor) -> Result<Tensor> {
    a.contiguous()?.apply_op2(&v.contiguous()?, SpecMulOp)
}
