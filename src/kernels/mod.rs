//! Fast CPU kernels for the hot paths of training and verification, as candle custom ops.

mod adam;
mod box_attack;
mod channel;
mod conv;
mod crown;
mod interval;
mod linear;
mod memory;
mod moments;
mod relu;
mod reverse;
mod specs;
mod winograd;

pub use adam::{AdamMoments, AdamStep, adam_update, sum_of_squares};
pub use box_attack::{box_signed_step, link_box_gradient, select_rows, signed_step};
pub use channel::{channel_affine, channel_affine_gradient, channel_affine_relu, channel_sum};
pub use conv::{
    conv_transpose2d, conv2d, conv2d_bias, conv2d_columns, conv2d_from_columns,
    conv2d_weight_gradient, conv2d_weight_gradient_from_columns, relu_masked_conv_transpose2d,
};
pub use crown::{
    channel_dot, crown_box_minimum, crown_box_minimum_gradient, crown_relu_step,
    crown_relu_step_gradient, scale_and_add_outer, weighted_channel_sums,
};
pub use interval::{relu_box_centre, relu_box_radius};
pub use linear::{
    abs_linear, abs_linear_weight_gradient, linear, linear_input_gradient, linear_weight_gradient,
};
pub use memory::{memory_and_swap_bytes, retain_freed_memory};
pub use moments::channel_moments;
pub use relu::{relu, relu_gradient};
pub use reverse::{
    BoxGradient, BoxStatistics, batch_norm_input_gradient, box_statistics, channel_gradient_sums,
    l1_penalty_gradient, relu_box_gradient,
};
pub use specs::spec_mul;
pub use winograd::{
    WinogradInput, winograd_conv2d, winograd_conv2d_input_gradient, winograd_conv2d_keeping_input,
    winograd_conv2d_weight_gradient, winograd_conv2d_weight_gradient_from, winograd_supports,
};

use candle_core::{CpuStorage, Layout, Result, Storage, Tensor, bail};
use rayon::prelude::*;
use std::cell::Cell;
use std::mem::MaybeUninit;
use std::ops::Range;

thread_local! {
    /// Whether this thread's kernels run single-threaded (see [`sequentially`]).
    static SEQUENTIAL: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with the kernels it calls on this thread single-threaded: matrix products without
/// gemm's thread split, element-wise passes in one loop, work sized for one thread. For work
/// the caller has already split across the pool's threads (a training attack's shards of a
/// batch), where each kernel's own fork and join would only cost time.
pub fn sequentially<R>(f: impl FnOnce() -> R) -> R {
    in_mode(true, f)
}

/// Runs `f` with the kernels it calls on this thread split across the pool, whatever mode the
/// thread was in. For a job handed to the pool from outside (a training step): a worker inside
/// [`sequentially`] that waits in a fork and join may pick that job up, and the job's
/// reductions, split by the threads the mode allows, must not round differently by which
/// worker ran it.
pub fn with_pool_kernels<R>(f: impl FnOnce() -> R) -> R {
    in_mode(false, f)
}

/// Runs `f` with this thread's kernels in the given mode, restoring the previous one after.
fn in_mode<R>(sequential: bool, f: impl FnOnce() -> R) -> R {
    /// Restores the thread's mode when `f` returns or unwinds.
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            SEQUENTIAL.with(|flag| flag.set(self.0));
        }
    }
    let _restore = Restore(SEQUENTIAL.with(|flag| flag.replace(sequential)));
    f()
}

/// Runs `work` over `len` rows split into one contiguous shard per pool thread (at most
/// `len`; a single shard unless `split`), each shard on its own thread with single-threaded
/// kernels ([`sequentially`]): one fork and join for all of the shard's kernels. A single shard
/// runs here with the kernels as they are. Results come in shard order, with each shard's rows.
pub(crate) fn in_shards<T: Send, E: Send>(
    len: usize,
    split: bool,
    work: impl Fn(Range<usize>) -> std::result::Result<T, E> + Sync,
) -> std::result::Result<Vec<(Range<usize>, T)>, E> {
    let shards = if split {
        kernel_threads().min(len).max(1)
    } else {
        1
    };
    if shards == 1 {
        return Ok(vec![(0..len, work(0..len)?)]);
    }
    (0..shards)
        .into_par_iter()
        .map(|s| {
            let range = len * s / shards..len * (s + 1) / shards;
            let result = sequentially(|| work(range.clone()))?;
            Ok((range, result))
        })
        .collect()
}

/// Whether this thread's kernels run single-threaded (inside [`sequentially`]).
fn in_sequential_mode() -> bool {
    SEQUENTIAL.with(Cell::get)
}

/// The threads a kernel on this thread may split its work over: 1 inside [`sequentially`],
/// else the rayon pool's.
pub(crate) fn kernel_threads() -> usize {
    if in_sequential_mode() {
        1
    } else {
        rayon::current_num_threads()
    }
}

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

/// Runs `f` on the f32 values of CPU `tensors` (made contiguous first), for graph-free kernels
/// with more operands than a custom op takes.
pub(super) fn with_values<R>(
    tensors: &[&Tensor],
    what: &str,
    f: impl FnOnce(&[&[f32]]) -> Result<R>,
) -> Result<R> {
    let contiguous = tensors
        .iter()
        .map(|t| t.contiguous())
        .collect::<Result<Vec<_>>>()?;
    let guards: Vec<_> = contiguous.iter().map(|t| t.storage_and_layout()).collect();
    let values = guards
        .iter()
        .map(|(storage, layout)| match &**storage {
            Storage::Cpu(cpu) => contiguous_f32(cpu, layout, what),
            _ => bail!("{what}: only CPU tensors are supported"),
        })
        .collect::<Result<Vec<_>>>()?;
    f(&values)
}

/// [`with_values`] for element-wise kernels: all operands must have the same length.
pub(super) fn with_equal_lengths<R>(
    tensors: &[&Tensor],
    what: &str,
    f: impl FnOnce(&[&[f32]]) -> Result<R>,
) -> Result<R> {
    with_values(tensors, what, |values| {
        if values.iter().any(|v| v.len() != values[0].len()) {
            bail!("{what}: operands of different sizes")
        }
        f(values)
    })
}

/// `len` values written chunk by chunk in parallel by `fill(chunk index, chunk)`.
///
/// Skips the zeroing of `vec![0.0; len]`, a whole extra pass over memory for the large outputs
/// of element-wise ops.
///
/// # Safety
/// `fill` must write every element of every chunk it is given.
unsafe fn par_filled(
    len: usize,
    chunk: usize,
    fill: impl Fn(usize, &mut [MaybeUninit<f32>]) + Sync + Send,
) -> Vec<f32> {
    let mut out = Vec::with_capacity(len);
    let slots = &mut out.spare_capacity_mut()[..len];
    if in_sequential_mode() {
        slots
            .chunks_mut(chunk.max(1))
            .enumerate()
            .for_each(|(index, values)| fill(index, values));
    } else {
        slots
            .par_chunks_mut(chunk.max(1))
            .enumerate()
            .for_each(|(index, values)| fill(index, values));
    }
    // SAFETY: the caller's `fill` initialised all `len` elements.
    unsafe { out.set_len(len) };
    out
}

/// `value` where `keep`, else `+0.0`, as a bit mask rather than a branch.
///
/// ReLU masks branch on activation signs, a coin toss for the branch predictor (a scalar,
/// mispredicted loop ran 5× slower); the masked form vectorises.
#[inline(always)]
fn masked(value: f32, keep: bool) -> f32 {
    f32::from_bits(value.to_bits() & u32::from(keep).wrapping_neg())
}

/// Row-major matrix product `dst (m×n) = [dst +] lhs (m×k) · rhs (k×n)` with explicit strides
/// (row stride, column stride) for the operands, on the rayon pool when `parallel` (callers that
/// already parallelise over samples pass `false`) and not inside [`sequentially`].
#[allow(clippy::too_many_arguments)]
pub(super) fn matmul(
    dst: &mut [f32],
    accumulate: bool,
    sizes: (usize, usize, usize),
    lhs: &[f32],
    lhs_strides: (usize, usize),
    rhs: &[f32],
    rhs_strides: (usize, usize),
    parallel: bool,
) {
    assert!(
        dst.len() >= sizes.0 * sizes.1,
        "matmul: destination too short"
    );
    // SAFETY: `dst` holds the m×n elements written (and, with `accumulate`, read).
    unsafe {
        gemm_into(
            dst.as_mut_ptr(),
            accumulate,
            sizes,
            (lhs, lhs_strides),
            (rhs, rhs_strides),
            parallel,
        )
    }
}

/// [`matmul`] into `m·n` new values, without a zeroing pass first (the product writes them all).
pub(super) fn matmul_new(
    (m, n, k): (usize, usize, usize),
    lhs: &[f32],
    lhs_strides: (usize, usize),
    rhs: &[f32],
    rhs_strides: (usize, usize),
    parallel: bool,
) -> Vec<f32> {
    if k == 0 {
        return vec![0f32; m * n];
    }
    let mut out: Vec<f32> = Vec::with_capacity(m * n);
    // SAFETY: `out` has room for the m×n elements gemm writes; without `accumulate` it reads
    // none of them, and with k > 0 it writes every one, so all are initialised after the call.
    unsafe {
        gemm_into(
            out.as_mut_ptr(),
            false,
            (m, n, k),
            (lhs, lhs_strides),
            (rhs, rhs_strides),
            parallel,
        );
        out.set_len(m * n);
    }
    out
}

/// The `gemm` call behind [`matmul`] and [`matmul_new`].
///
/// # Safety
/// `dst` must be valid for writing `m·n` row-major elements (and reading them with
/// `accumulate`); `lhs` and `rhs` must cover every element their sizes and strides address.
unsafe fn gemm_into(
    dst: *mut f32,
    accumulate: bool,
    (m, n, k): (usize, usize, usize),
    (lhs, (lhs_rs, lhs_cs)): (&[f32], (usize, usize)),
    (rhs, (rhs_rs, rhs_cs)): (&[f32], (usize, usize)),
    parallel: bool,
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            n as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            if parallel && !in_sequential_mode() {
                gemm::Parallelism::Rayon(rayon::current_num_threads())
            } else {
                gemm::Parallelism::None
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_handed_to_the_pool_splits_its_kernels_even_on_a_thread_inside_a_shard() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        let threads = pool.install(|| {
            sequentially(|| {
                let inside = kernel_threads();
                let handed = with_pool_kernels(kernel_threads);
                (inside, handed, kernel_threads())
            })
        });
        assert_eq!(threads, (1, 3, 1), "shard, handed-over work, shard again");
        assert_eq!(
            pool.install(kernel_threads),
            3,
            "the mode ends with the shard"
        );
    }
}
