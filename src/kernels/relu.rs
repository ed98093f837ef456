//! The rectified linear unit with a one-pass backward.
//!
//! candle differentiates `relu` as `grad · (x ≥ 0).to_dtype()`, four full passes and three
//! temporaries per ReLU; training steps and IBP bound passes apply ReLUs to every hidden
//! activation, so this op masks the gradient in one pass instead.

use super::{contiguous_f32, masked, par_filled};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor, bail};

/// Elements per rayon task: large enough that scheduling costs nothing next to the memory traffic.
const CHUNK: usize = 1 << 14;

struct ReluOp;

impl CustomOp1 for ReluOp {
    fn name(&self) -> &'static str {
        "cthpo-relu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout, "relu input")?;
        // SAFETY: each output chunk is zipped with an input slice at least as long.
        let out = unsafe {
            par_filled(x.len(), CHUNK, |index, y| {
                for (y, x) in y.iter_mut().zip(&x[index * CHUNK..]) {
                    y.write(x.max(0.0));
                }
            })
        };
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _result: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            x.apply_op2_no_bwd(&grad.contiguous()?, &ReluGradientOp)?,
        ))
    }
}

/// `grad · [x ≥ 0]`: the subgradient candle's own `relu` uses, so both train alike.
struct ReluGradientOp;

impl CustomOp2 for ReluGradientOp {
    fn name(&self) -> &'static str {
        "cthpo-relu-gradient"
    }

    fn cpu_fwd(
        &self,
        x_storage: &CpuStorage,
        x_layout: &Layout,
        g_storage: &CpuStorage,
        g_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(x_storage, x_layout, "relu gradient input")?;
        let g = contiguous_f32(g_storage, g_layout, "relu gradient")?;
        if x.len() != g.len() {
            bail!("relu gradient: {} inputs, {} gradients", x.len(), g.len())
        }
        // SAFETY: each output chunk is zipped with input slices at least as long.
        let out = unsafe {
            par_filled(x.len(), CHUNK, |index, d| {
                let start = index * CHUNK;
                for ((d, x), g) in d.iter_mut().zip(&x[start..]).zip(&g[start..]) {
                    d.write(masked(*g, *x >= 0.0));
                }
            })
        };
        Ok((CpuStorage::F32(out), x_layout.shape().clone()))
    }
}

/// `max(x, 0)` element-wise, differentiable with the same subgradient as candle's `relu`.
pub fn relu(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(ReluOp)
}

/// `grad · [x ≥ 0]`: the input gradient of [`relu`] at input `x`, graph-free.
pub fn relu_gradient(x: &Tensor, grad: &Tensor) -> Result<Tensor> {
    x.contiguous()?
        .apply_op2_no_bwd(&grad.contiguous()?, &ReluGradientOp)
}
