//! Per-channel batch mean and variance (BatchNorm's training statistics) with a fast backward.
//!
//! Reducing over the batch and spatial axes with candle needs a transposed copy of the
//! activations and a strided reduction, then several more passes and temporaries for the
//! variance and for each of their gradients. This op reads the activations in memory order.

use super::channel::channel_affine;
use super::contiguous_f32;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

struct ChannelMomentsOp;

/// `Σ f(v)` over `values` with eight independent accumulators, so the loop vectorises.
#[inline]
fn lane_sum(values: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut lanes = [0f32; 8];
    let chunks = values.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().map(|&v| f(v)).sum();
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane += f(v);
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// Batch size, channels and elements per channel plane of a `[B, C, …]` layout.
fn planes(layout: &Layout) -> Result<(usize, usize, usize)> {
    let dims = layout.shape().dims();
    if dims.len() < 2 {
        bail!("channel moments: input {dims:?} has no channel axis")
    }
    Ok((dims[0], dims[1], dims[2..].iter().product()))
}

impl CustomOp1 for ChannelMomentsOp {
    fn name(&self) -> &'static str {
        "cthpo-channel-moments"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout, "channel moments input")?;
        let (batch, channels, plane) = planes(layout)?;
        let count = (batch * plane).max(1) as f64;
        let sample_len = channels * plane;
        // Per-sample partial sums (f32 within a plane, f64 across planes and samples), in
        // parallel over samples so each worker streams through contiguous memory.
        let per_channel = |term: &(dyn Fn(usize, &[f32]) -> f32 + Sync)| -> Vec<f64> {
            x.par_chunks(sample_len.max(1))
                .fold(
                    || vec![0f64; channels],
                    |mut acc, sample| {
                        for (c, slot) in acc.iter_mut().enumerate() {
                            *slot += term(c, &sample[c * plane..(c + 1) * plane]) as f64;
                        }
                        acc
                    },
                )
                .reduce(
                    || vec![0f64; channels],
                    |mut a, b| {
                        a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
                        a
                    },
                )
        };
        // Two passes (mean, then centred squares) avoid the cancellation of E[x²] − E[x]².
        let sums = per_channel(&|_, values| lane_sum(values, |v| v));
        let mean: Vec<f64> = sums.iter().map(|s| s / count).collect();
        let mean32: Vec<f32> = mean.iter().map(|&m| m as f32).collect();
        let squares = per_channel(&|c, values| {
            let m = mean32[c];
            lane_sum(values, |v| (v - m) * (v - m))
        });
        let mut out: Vec<f32> = mean.iter().map(|&m| m as f32).collect();
        out.extend(squares.iter().map(|s| (s / count) as f32));
        Ok((CpuStorage::F32(out), Shape::from((2, channels))))
    }

    fn bwd(&self, x: &Tensor, moments: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        // ∂mean/∂x = 1/N and ∂var/∂x = 2(x − mean)/N (the mean's own dependence cancels), so
        // the input gradient is the per-channel affine map a·x + b below.
        let dims = x.dims();
        let count = (x.elem_count() / dims[1].max(1)).max(1) as f64;
        let (d_mean, d_var) = (grad.get(0)?, grad.get(1)?);
        let mean = moments.get(0)?.detach();
        let a = (&d_var * (2.0 / count))?;
        let b = ((&d_mean / count)? - (&a * &mean)?)?;
        Ok(Some(channel_affine(&x.detach(), &a, &b)?))
    }
}

/// Per-channel mean (row 0) and biased variance (row 1) over every axis but axis 1 of a
/// `[B, C, …]` batch, as one `[2, C]` tensor; differentiable.
pub fn channel_moments(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(ChannelMomentsOp)
}
