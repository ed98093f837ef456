//! Fast CPU kernels for the hot paths of training and verification, as candle custom ops.

mod channel;
mod conv;
mod memory;
mod specs;

pub use channel::channel_affine;
pub use conv::{conv_transpose2d, conv2d};
pub use memory::retain_freed_memory;
pub use specs::spec_mul;

use candle_core::{CpuStorage, Layout, Result, bail};

/// The f32 values of a contiguous CPU operand of a custom op, or an error naming it.
fn contiguous_f32<'a>(storage: &'a CpuStorage, layout: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(values) = storage else {
        bail!("{what}: only f32 tensors are supported")
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&values[start..end]),
        None => bail!("{what}: operand must be contiguous"),
    }
}
