//! Graph-free backward kernels for hand-written reverse passes (`train::backprop`), where an
//! op needs more operands than a candle custom op takes or per-channel values as plain numbers.

use super::{masked, par_filled, with_equal_lengths};
use candle_core::{Result, Tensor, bail};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Elements per rayon task of the element-wise loops.
const CHUNK: usize = 1 << 14;

/// `(∂c, ∂r)` of the box ReLU `(c, r) ↦ (relu_box_centre, relu_box_radius)` from the gradients
/// of both outputs, with the subgradient `[c ± r ≥ 0]` of the ops' own backward.
///
/// `extra` adds a regulariser's gradient with respect to the ReLU's input box in the same pass.
pub fn relu_box_gradient(
    centre: &Tensor,
    radius: &Tensor,
    grad_centre: &Tensor,
    grad_radius: &Tensor,
    extra: Option<&BoxGradient>,
) -> Result<(Tensor, Tensor)> {
    let extra = extra.copied().unwrap_or_default();
    let dims = centre.dims().to_vec();
    let (dc, dr) = with_equal_lengths(
        &[centre, radius, grad_centre, grad_radius],
        "interval relu gradient",
        |v| {
            let (c, r, gc, gr) = (v[0], v[1], v[2], v[3]);
            let n = c.len();
            let mut dc: Vec<f32> = Vec::with_capacity(n);
            let mut dr: Vec<f32> = Vec::with_capacity(n);
            dc.spare_capacity_mut()[..n]
                .par_chunks_mut(CHUNK)
                .zip(dr.spare_capacity_mut()[..n].par_chunks_mut(CHUNK))
                .enumerate()
                .for_each(|(index, (dc, dr))| {
                    let start = index * CHUNK;
                    let inputs = c[start..]
                        .iter()
                        .zip(&r[start..])
                        .zip(gc[start..].iter().zip(&gr[start..]));
                    for ((dc, dr), ((c, r), (gc, gr))) in
                        dc.iter_mut().zip(dr.iter_mut()).zip(inputs)
                    {
                        // centre = (u⁺ + l⁺)/2 and radius = (u⁺ − l⁺)/2 with u = c + r, l = c − r.
                        let upper = masked((gc + gr) * 0.5, c + r >= 0.0);
                        let lower = masked((gc - gr) * 0.5, c - r >= 0.0);
                        let (extra_centre, extra_radius) = extra.at(*c, *r);
                        dc.write(upper + lower + extra_centre);
                        dr.write(upper - lower + extra_radius);
                    }
                });
            // SAFETY: both buffers were written element by element above.
            unsafe {
                dc.set_len(n);
                dr.set_len(n);
            }
            Ok((dc, dr))
        },
    )?;
    let device = centre.device();
    Ok((
        Tensor::from_vec(dc, dims.as_slice(), device)?,
        Tensor::from_vec(dr, dims.as_slice(), device)?,
    ))
}

/// Channels and elements per channel plane of a `[B, C, …]` tensor.
fn channel_planes(x: &Tensor, parameters: usize, what: &str) -> Result<(usize, usize)> {
    let dims = x.dims();
    if dims.len() < 2 || dims[1] == 0 || dims[1] != parameters {
        bail!("{what}: {parameters} channel parameters for input {dims:?}")
    }
    Ok((dims[1], dims[2..].iter().product::<usize>().max(1)))
}

/// Per-channel `(Σ g̃·x, Σ g̃)` over a `[B, C, …]` batch, where `g̃` is `grad`, masked by
/// `[scale·x + shift ≥ 0]` when `relu`: the scale and shift gradients of a channel affine map.
pub fn channel_gradient_sums(
    x: &Tensor,
    scale: &[f32],
    shift: &[f32],
    grad: &Tensor,
    relu: bool,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let what = "channel gradient sums";
    let (channels, plane) = channel_planes(x, scale.len(), what)?;
    if shift.len() != channels {
        bail!("{what}: {} shifts for {channels} channels", shift.len())
    }
    with_equal_lengths(&[x, grad], what, |v| {
        let (x, grad) = (v[0], v[1]);
        let sample = channels * plane;
        let sums = x
            .par_chunks(sample)
            .zip(grad.par_chunks(sample))
            .fold(
                || vec![[0f64; 2]; channels],
                |mut sums, (x, grad)| {
                    for (c, sum) in sums.iter_mut().enumerate() {
                        let rows = (
                            &x[c * plane..(c + 1) * plane],
                            &grad[c * plane..(c + 1) * plane],
                        );
                        let [weighted, total] = if relu {
                            row_sums::<true>(rows.0, rows.1, scale[c], shift[c])
                        } else {
                            row_sums::<false>(rows.0, rows.1, scale[c], shift[c])
                        };
                        sum[0] += f64::from(weighted);
                        sum[1] += f64::from(total);
                    }
                    sums
                },
            )
            .reduce(
                || vec![[0f64; 2]; channels],
                |mut a, b| {
                    for (a, b) in a.iter_mut().zip(b) {
                        a[0] += b[0];
                        a[1] += b[1];
                    }
                    a
                },
            );
        Ok((
            sums.iter().map(|s| s[0] as f32).collect(),
            sums.iter().map(|s| s[1] as f32).collect(),
        ))
    })
}

/// `[Σ g̃·x, Σ g̃]` over one channel plane.
#[inline]
fn row_sums<const RELU: bool>(x: &[f32], grad: &[f32], a: f32, b: f32) -> [f32; 2] {
    let whole = x.len().min(grad.len()) / 8 * 8;
    let [weighted, total] = simd_row_sums::<RELU>(&x[..whole], &grad[..whole], a, b);
    let [tail_weighted, tail_total] = scalar_row_sums::<RELU>(&x[whole..], &grad[whole..], a, b);
    [weighted + tail_weighted, total + tail_total]
}

/// [`row_sums`] one element at a time (the tail, and targets without SSE).
#[inline]
fn scalar_row_sums<const RELU: bool>(x: &[f32], grad: &[f32], a: f32, b: f32) -> [f32; 2] {
    let (mut weighted, mut total) = (0f32, 0f32);
    for (x, g) in x.iter().zip(grad) {
        let g = if RELU {
            masked(*g, a * x + b >= 0.0)
        } else {
            *g
        };
        weighted += g * x;
        total += g;
    }
    [weighted, total]
}

/// The body of [`row_sums`] (length a multiple of 8) with explicit SSE: auto-vectorised, the
/// masked reduction became per-lane scalar code with a branch around each load of `g`.
#[cfg(target_arch = "x86_64")]
#[inline]
fn simd_row_sums<const RELU: bool>(x: &[f32], grad: &[f32], a: f32, b: f32) -> [f32; 2] {
    use std::arch::x86_64::*;
    debug_assert!(x.len() == grad.len() && x.len().is_multiple_of(8));
    // SAFETY: SSE is part of x86_64; every load reads 4 floats inside the slices (length a
    // multiple of 8, checked by the caller's slicing).
    unsafe {
        let (va, vb, zero) = (_mm_set1_ps(a), _mm_set1_ps(b), _mm_setzero_ps());
        let mut weighted = [zero; 2];
        let mut total = [zero; 2];
        for (x, g) in x.chunks_exact(8).zip(grad.chunks_exact(8)) {
            for half in 0..2 {
                let vx = _mm_loadu_ps(x.as_ptr().add(4 * half));
                let mut vg = _mm_loadu_ps(g.as_ptr().add(4 * half));
                if RELU {
                    let keep = _mm_cmpge_ps(_mm_add_ps(_mm_mul_ps(va, vx), vb), zero);
                    vg = _mm_and_ps(vg, keep);
                }
                weighted[half] = _mm_add_ps(weighted[half], _mm_mul_ps(vg, vx));
                total[half] = _mm_add_ps(total[half], vg);
            }
        }
        let mut lanes = [[0f32; 4]; 4];
        _mm_storeu_ps(lanes[0].as_mut_ptr(), weighted[0]);
        _mm_storeu_ps(lanes[1].as_mut_ptr(), weighted[1]);
        _mm_storeu_ps(lanes[2].as_mut_ptr(), total[0]);
        _mm_storeu_ps(lanes[3].as_mut_ptr(), total[1]);
        [
            lanes[0].iter().chain(&lanes[1]).sum(),
            lanes[2].iter().chain(&lanes[3]).sum(),
        ]
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn simd_row_sums<const RELU: bool>(x: &[f32], grad: &[f32], a: f32, b: f32) -> [f32; 2] {
    scalar_row_sums::<RELU>(x, grad, a, b)
}

/// `scale·g̃ + a·x + b` per channel of a `[B, C, …]` batch (`g̃` masked as in
/// [`channel_gradient_sums`]): BatchNorm's input gradient, where `a·x + b` carries the gradient
/// that reaches `x` through the batch mean and variance.
pub fn batch_norm_input_gradient(
    x: &Tensor,
    (scale, shift): (&[f32], &[f32]),
    (a, b): (&[f32], &[f32]),
    grad: &Tensor,
    relu: bool,
) -> Result<Tensor> {
    let what = "batch norm input gradient";
    let (channels, plane) = channel_planes(x, scale.len(), what)?;
    if [shift.len(), a.len(), b.len()]
        .iter()
        .any(|&n| n != channels)
    {
        bail!("{what}: per-channel parameters of different lengths")
    }
    let out = with_equal_lengths(&[x, grad], what, |v| {
        let (x, grad) = (v[0], v[1]);
        // SAFETY: each plane-sized output chunk is written element by element.
        Ok(unsafe {
            par_filled(x.len(), plane, |row, dx| {
                let c = row % channels;
                let start = row * plane;
                let rows = (&x[start..start + dx.len()], &grad[start..start + dx.len()]);
                let parameters = [scale[c], shift[c], a[c], b[c]];
                if relu {
                    gradient_row::<true>(dx, rows, parameters);
                } else {
                    gradient_row::<false>(dx, rows, parameters);
                }
            })
        })
    })?;
    Tensor::from_vec(out, x.dims(), x.device())
}

#[inline]
fn gradient_row<const RELU: bool>(
    dx: &mut [MaybeUninit<f32>],
    (x, grad): (&[f32], &[f32]),
    [scale, shift, a, b]: [f32; 4],
) {
    for ((dx, &x), &g) in dx.iter_mut().zip(x).zip(grad) {
        let g = if RELU {
            masked(g, scale * x + shift >= 0.0)
        } else {
            g
        };
        dx.write(scale * g + a * x + b);
    }
}

/// `(Σ|W|, grad + λ·sign(W))` in one pass, with candle's `sign(0) = +1`: an L1 penalty's value
/// and its gradient added to the weight's (`grad` absent: the penalty's gradient alone).
pub fn l1_penalty_gradient(
    weight: &Tensor,
    grad: Option<&Tensor>,
    lambda: f32,
) -> Result<(f64, Tensor)> {
    let zeros;
    let grad = match grad {
        Some(grad) => grad,
        None => {
            zeros = weight.zeros_like()?;
            &zeros
        }
    };
    let (sum, out) = with_equal_lengths(&[weight, grad], "l1 penalty gradient", |v| {
        let (w, g) = (v[0], v[1]);
        let sum: f64 = w
            .par_chunks(CHUNK)
            .map(|chunk| chunk.iter().map(|w| f64::from(w.abs())).sum::<f64>())
            .sum();
        // SAFETY: each output chunk is zipped with input slices at least as long.
        let out = unsafe {
            par_filled(w.len(), CHUNK, |index, out| {
                let start = index * CHUNK;
                for ((out, w), g) in out.iter_mut().zip(&w[start..]).zip(&g[start..]) {
                    // Copy the weight's sign bit onto λ (+0 counts as +, -0 as −; candle's
                    // `w ≥ 0` takes −0 as + too, so clear it for zeros).
                    let sign_bit = w.to_bits() & 0x8000_0000 & u32::from(*w != 0.0).wrapping_neg();
                    out.write(g + f32::from_bits(lambda.to_bits() ^ sign_bit));
                }
            })
        };
        Ok((sum, out))
    })?;
    Ok((sum, Tensor::from_vec(out, weight.dims(), weight.device())?))
}

/// Sums over a box `c ± r` that Shi et al.'s regulariser reads: stably active elements have
/// `c − r > 0`, stably inactive ones `c + r < 0`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BoxStatistics {
    /// Elements.
    pub count: f64,
    /// `Σ r`.
    pub radius_sum: f64,
    /// `Σ c`.
    pub centre_sum: f64,
    /// Stably active elements.
    pub active: f64,
    /// Stably inactive elements.
    pub inactive: f64,
    /// `Σ c` over the stably active ones.
    pub active_centre_sum: f64,
    /// `Σ c` over the stably inactive ones.
    pub inactive_centre_sum: f64,
    /// `Σ c²` over the stably active ones.
    pub active_square_sum: f64,
    /// `Σ c²` over the stably inactive ones.
    pub inactive_square_sum: f64,
}

impl BoxStatistics {
    fn add(mut self, other: BoxStatistics) -> BoxStatistics {
        self.count += other.count;
        self.radius_sum += other.radius_sum;
        self.centre_sum += other.centre_sum;
        self.active += other.active;
        self.inactive += other.inactive;
        self.active_centre_sum += other.active_centre_sum;
        self.inactive_centre_sum += other.inactive_centre_sum;
        self.active_square_sum += other.active_square_sum;
        self.inactive_square_sum += other.inactive_square_sum;
        self
    }
}

/// [`BoxStatistics`] of the box `centre ± radius`, in one pass.
pub fn box_statistics(centre: &Tensor, radius: &Tensor) -> Result<BoxStatistics> {
    with_equal_lengths(&[centre, radius], "box statistics", |v| {
        Ok(v[0]
            .par_chunks(CHUNK)
            .zip(v[1].par_chunks(CHUNK))
            .map(|(centre, radius)| {
                let mut sums = BoxStatistics {
                    count: centre.len() as f64,
                    ..BoxStatistics::default()
                };
                for (&c, &r) in centre.iter().zip(radius) {
                    let (c64, r64) = (f64::from(c), f64::from(r));
                    sums.radius_sum += r64;
                    sums.centre_sum += c64;
                    if c - r > 0.0 {
                        sums.active += 1.0;
                        sums.active_centre_sum += c64;
                        sums.active_square_sum += c64 * c64;
                    } else if c + r < 0.0 {
                        sums.inactive += 1.0;
                        sums.inactive_centre_sum += c64;
                        sums.inactive_square_sum += c64 * c64;
                    }
                }
                sums
            })
            .reduce(BoxStatistics::default, BoxStatistics::add))
    })
}

/// A gradient with respect to a box `c ± r` of the form Shi's regulariser has:
/// `∂c = a·[active] + i·[inactive] + 2(c − m)(α·[active] + β·[inactive]) + offset`, `∂r = radius`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BoxGradient {
    /// Coefficient `a` of the stably active indicator.
    pub active: f32,
    /// Coefficient `i` of the stably inactive indicator.
    pub inactive: f32,
    /// Coefficient `α` of the active centres' deviation from the mean.
    pub active_deviation: f32,
    /// Coefficient `β` of the inactive centres' deviation from the mean.
    pub inactive_deviation: f32,
    /// The mean centre `m`.
    pub mean: f32,
    /// Added to every centre's gradient.
    pub offset: f32,
    /// Added to every radius' gradient.
    pub radius: f32,
}

impl BoxGradient {
    #[inline]
    fn at(&self, c: f32, r: f32) -> (f32, f32) {
        let active = f32::from(u8::from(c - r > 0.0));
        let inactive = f32::from(u8::from(c + r < 0.0));
        let deviation = 2.0 * (c - self.mean);
        let centre = self.active * active
            + self.inactive * inactive
            + deviation * (self.active_deviation * active + self.inactive_deviation * inactive)
            + self.offset;
        (centre, self.radius)
    }
}
