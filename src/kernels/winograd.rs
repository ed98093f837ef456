//! Winograd F(2×2, 3×3) convolutions for training steps: 3×3 kernels, stride 1, padding 1.
//!
//! Each 2×2 output tile is `Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A` of its 4×4 input patch `d` (Lavin &
//! Gray, 2016): per tile and channel pair 16 multiplications instead of 36, so the matrix
//! products (16 per group of images, one per tile element) do 2.25× less work than im2col's.
//! The input gradient is the same convolution of the output gradient with the flipped,
//! transposed kernel; the kernel gradient is the transpose of the forward map in the
//! transformed domain. Rounding differs from the direct sum in the last bits, so bound and
//! certification passes keep the im2col kernels; the reverse pass of training uses these.

use super::{matmul, with_values};
use candle_core::{Result, Shape, Tensor, bail};
use rayon::prelude::*;

/// Columns (tiles of all images in a group) each matrix product aims for: enough to amortise
/// packing the transformed kernel, few enough that a group's transforms stay in cache.
const TARGET_COLUMNS: usize = 392;

/// Sizes of one Winograd convolution over a batch.
#[derive(Debug, Clone, Copy)]
struct Plan {
    batch: usize,
    in_channels: usize,
    out_channels: usize,
    height: usize,
    width: usize,
    tiles_wide: usize,
    /// 2×2 output tiles per image.
    tiles: usize,
    /// Images per group (one set of 16 products).
    group: usize,
}

impl Plan {
    fn new(
        batch: usize,
        in_channels: usize,
        out_channels: usize,
        height: usize,
        width: usize,
    ) -> Plan {
        let tiles = (height / 2) * (width / 2);
        Plan {
            batch,
            in_channels,
            out_channels,
            height,
            width,
            tiles_wide: width / 2,
            tiles,
            group: (TARGET_COLUMNS / tiles.max(1)).clamp(1, batch.max(1)),
        }
    }
    fn plane(&self) -> usize {
        self.height * self.width
    }
}

/// Whether a convolution of `x` `[B, Ci, H, W]` with `kernel` `[Co, Ci, k, k]` at this stride
/// and padding has the shape these kernels compute: a 3×3 kernel, stride 1, padding 1, even
/// height and width, and at least 16 input channels (fewer do not pay for the transforms).
pub fn winograd_supports(x: &[usize], kernel: &[usize], stride: usize, padding: usize) -> bool {
    matches!((x, kernel), ([_, ci, h, w], [_, kci, 3, 3])
        if ci == kci && *ci >= 16 && h.is_multiple_of(2) && w.is_multiple_of(2) && *h >= 2 && *w >= 2)
        && stride == 1
        && padding == 1
}

/// `U[ξ][co][ci] = (G g Gᵀ)[ξ]` for every 3×3 kernel `g = kernel[co][ci]`.
fn kernel_transform(kernel: &[f32], out_channels: usize, in_channels: usize) -> Vec<f32> {
    let pairs = out_channels * in_channels;
    let mut transformed = vec![0f32; 16 * pairs];
    for (pair, g) in kernel.chunks_exact(9).enumerate() {
        // Rows of G·g (4×3), then each row times Gᵀ.
        let rows = [
            [g[0], g[1], g[2]],
            [
                0.5 * (g[0] + g[3] + g[6]),
                0.5 * (g[1] + g[4] + g[7]),
                0.5 * (g[2] + g[5] + g[8]),
            ],
            [
                0.5 * (g[0] - g[3] + g[6]),
                0.5 * (g[1] - g[4] + g[7]),
                0.5 * (g[2] - g[5] + g[8]),
            ],
            [g[6], g[7], g[8]],
        ];
        for (i, [a, b, c]) in rows.iter().enumerate() {
            let u = [*a, 0.5 * (a + b + c), 0.5 * (a - b + c), *c];
            for (j, value) in u.iter().enumerate() {
                transformed[(4 * i + j) * pairs + pair] = *value;
            }
        }
    }
    transformed
}

/// `g = Gᵀ U G` (3×3) for every `U[ξ][co][ci]`: the kernel gradient from its transform.
fn kernel_transform_adjoint(transformed: &[f32], pairs: usize) -> Vec<f32> {
    let mut kernel = vec![0f32; 9 * pairs];
    for pair in 0..pairs {
        let u = |i: usize, j: usize| transformed[(4 * i + j) * pairs + pair];
        // Gᵀ·U (3×4): combine rows, then each row times G.
        let rows: [[f32; 4]; 3] = std::array::from_fn(|r| {
            std::array::from_fn(|j| match r {
                0 => u(0, j) + 0.5 * (u(1, j) + u(2, j)),
                1 => 0.5 * (u(1, j) - u(2, j)),
                _ => 0.5 * (u(1, j) + u(2, j)) + u(3, j),
            })
        });
        for (r, [a, b, c, d]) in rows.iter().enumerate() {
            let g = &mut kernel[pair * 9 + r * 3..pair * 9 + r * 3 + 3];
            g[0] = a + 0.5 * (b + c);
            g[1] = 0.5 * (b - c);
            g[2] = 0.5 * (b + c) + d;
        }
    }
    kernel
}

/// Splits `line` (even length) into its even and odd elements.
#[inline]
fn deinterleave(line: &[f32], even: &mut [f32], odd: &mut [f32]) {
    for ((e, o), pair) in even
        .iter_mut()
        .zip(odd.iter_mut())
        .zip(line.chunks_exact(2))
    {
        *e = pair[0];
        *o = pair[1];
    }
}

/// Row `row` of a plane `half` wide as the first `n` entries and the `n` after the first.
#[inline]
fn shifted_row(plane: &[f32], row: usize, half: usize, n: usize) -> (&[f32], &[f32]) {
    let row = &plane[row * half..(row + 1) * half];
    (&row[..n], &row[1..=n])
}

/// The `len` entries at `column` of transformed planes `first..first + 4` (planes `stride`
/// apart) as four disjoint slices, so the loops writing them carry no bounds checks.
fn four_rows(
    out: &mut [f32],
    first: usize,
    stride: usize,
    column: usize,
    len: usize,
) -> [&mut [f32]; 4] {
    let start = first * stride + column;
    let (_, rest) = out.split_at_mut(start);
    let (r0, rest) = rest.split_at_mut(stride);
    let (r1, rest) = rest.split_at_mut(stride);
    let (r2, rest) = rest.split_at_mut(stride);
    [
        &mut r0[..len],
        &mut r1[..len],
        &mut r2[..len],
        &mut rest[..len],
    ]
}

/// `V[ξ][c][col] = (Bᵀ d B)[ξ]` for every channel and tile of `images` (`channels` planes
/// each); `col` runs over (image, tile).
///
/// Works on the even and odd columns of the zero-padded plane separately, so every step is a
/// contiguous loop over the tiles of one tile row (the per-tile form ran scalar).
fn input_transform(
    plan: &Plan,
    images: &[f32],
    channels: usize,
    out: &mut [f32],
    scratch: &mut Vec<f32>,
) {
    let (height, width, tiles_wide) = (plan.height, plan.width, plan.tiles_wide);
    let count = images.len() / (channels * plan.plane());
    let columns = count * plan.tiles;
    // Padded rows split by column parity: both halves have tiles_wide + 1 entries.
    let half = tiles_wide + 1;
    let rows = height + 2;
    scratch.clear();
    scratch.resize(2 * rows * half, 0.0);
    let (even_plane, odd_plane) = scratch.split_at_mut(rows * half);
    for (image_index, image) in images.chunks_exact(channels * plan.plane()).enumerate() {
        for (c, source) in image.chunks_exact(plan.plane()).enumerate() {
            // Padded column p = input column p − 1: even padded columns are odd input columns.
            for (row, line) in source.chunks_exact(width).enumerate() {
                let even = &mut even_plane[(row + 1) * half..(row + 2) * half];
                let odd = &mut odd_plane[(row + 1) * half..(row + 2) * half];
                deinterleave(line, &mut odd[..], &mut even[1..]);
            }
            let base = c * columns + image_index * plan.tiles;
            for ty in 0..height / 2 {
                let column = base + ty * tiles_wide;
                let n = tiles_wide;
                let rows = |plane, r| shifted_row(plane, 2 * ty + r, half, n);
                // Bᵀ's rows as (first, second, sign): t_i = d_first + sign·d_second. The row
                // combination is recomputed at both columns a tile reads rather than stored and
                // reloaded one element over, which stalled on store forwarding.
                for (i, (first, second, sign)) in
                    [(0, 2, -1.0f32), (1, 2, 1.0), (2, 1, -1.0), (1, 3, -1.0)]
                        .into_iter()
                        .enumerate()
                {
                    let ((ea0, ea1), (eb0, eb1)) =
                        (rows(&*even_plane, first), rows(&*even_plane, second));
                    let ((oa0, oa1), (ob0, ob1)) =
                        (rows(&*odd_plane, first), rows(&*odd_plane, second));
                    let [v0, v1, v2, v3] = four_rows(out, 4 * i, channels * columns, column, n);
                    for tx in 0..n {
                        let e0 = ea0[tx] + sign * eb0[tx];
                        let e1 = ea1[tx] + sign * eb1[tx];
                        let o0 = oa0[tx] + sign * ob0[tx];
                        let o1 = oa1[tx] + sign * ob1[tx];
                        (v0[tx], v1[tx], v2[tx], v3[tx]) = (e0 - e1, o0 + e1, e1 - o0, o0 - o1);
                    }
                }
            }
        }
    }
}

/// Output tiles `Aᵀ M A` (+ bias) of the products `M[ξ][co][col]`, written as images.
fn output_transform(
    plan: &Plan,
    products: &[f32],
    bias: Option<&[f32]>,
    out: &mut [f32],
    scratch: &mut Vec<f32>,
) {
    let (channels, width, tiles_wide) = (plan.out_channels, plan.width, plan.tiles_wide);
    let count = out.len() / (channels * plan.plane());
    let columns = count * plan.tiles;
    let stride = channels * columns;
    scratch.clear();
    scratch.resize(8 * tiles_wide, 0.0);
    for (image_index, image) in out.chunks_exact_mut(channels * plan.plane()).enumerate() {
        for (c, plane) in image.chunks_exact_mut(plan.plane()).enumerate() {
            let seed = bias.map_or(0.0, |b| b[c]);
            let base = c * columns + image_index * plan.tiles;
            for ty in 0..plan.height / 2 {
                let column = base + ty * tiles_wide;
                let m =
                    |xi: usize| &products[xi * stride + column..xi * stride + column + tiles_wide];
                // Aᵀ·M by rows: a0 = m0 + m1 + m2, a1 = m1 − m2 − m3 (rows of the 4×4 tile).
                let (a, _) = scratch.split_at_mut(8 * tiles_wide);
                for j in 0..4 {
                    let (r0, r1, r2, r3) = (m(j), m(4 + j), m(8 + j), m(12 + j));
                    let (first, second) = a.split_at_mut(4 * tiles_wide);
                    let first = &mut first[j * tiles_wide..(j + 1) * tiles_wide];
                    let second = &mut second[j * tiles_wide..(j + 1) * tiles_wide];
                    for tx in 0..tiles_wide {
                        first[tx] = r0[tx] + r1[tx] + r2[tx];
                        second[tx] = r1[tx] - r2[tx] - r3[tx];
                    }
                }
                for r in 0..2 {
                    let w = |j: usize| &a[(4 * r + j) * tiles_wide..(4 * r + j + 1) * tiles_wide];
                    let (w0, w1, w2, w3) = (w(0), w(1), w(2), w(3));
                    let line = &mut plane[(2 * ty + r) * width..(2 * ty + r + 1) * width];
                    for (tx, pair) in line.chunks_exact_mut(2).enumerate() {
                        pair[0] = seed + w0[tx] + w1[tx] + w2[tx];
                        pair[1] = seed + w1[tx] - w2[tx] - w3[tx];
                    }
                }
            }
        }
    }
}

/// `D[ξ][co][col] = (A ∂Y Aᵀ)[ξ]`: the output gradient in the transformed domain.
fn gradient_transform(plan: &Plan, gradient: &[f32], out: &mut [f32], scratch: &mut Vec<f32>) {
    let (channels, width, tiles_wide) = (plan.out_channels, plan.width, plan.tiles_wide);
    let count = gradient.len() / (channels * plan.plane());
    let columns = count * plan.tiles;
    let stride = channels * columns;
    scratch.clear();
    scratch.resize(4 * tiles_wide, 0.0);
    for (image_index, image) in gradient.chunks_exact(channels * plan.plane()).enumerate() {
        for (c, plane) in image.chunks_exact(plan.plane()).enumerate() {
            let base = c * columns + image_index * plan.tiles;
            for ty in 0..plan.height / 2 {
                let (top, bottom) = scratch.split_at_mut(2 * tiles_wide);
                let (p, q) = top.split_at_mut(tiles_wide);
                let (r, s) = bottom.split_at_mut(tiles_wide);
                deinterleave(&plane[2 * ty * width..(2 * ty + 1) * width], p, q);
                deinterleave(&plane[(2 * ty + 1) * width..(2 * ty + 2) * width], r, s);
                let column = base + ty * tiles_wide;
                // Rows of A·∂Y: [p, q], [p + r, q + s], [p − r, q − s], [−r, −s]; each row [u, v]
                // times Aᵀ is [u, u + v, u − v, −v].
                for i in 0..4 {
                    let [o0, o1, o2, o3] = four_rows(out, 4 * i, stride, column, tiles_wide);
                    for tx in 0..tiles_wide {
                        let (p, q, r, s) = (p[tx], q[tx], r[tx], s[tx]);
                        let (u, v) = match i {
                            0 => (p, q),
                            1 => (p + r, q + s),
                            2 => (p - r, q - s),
                            _ => (-r, -s),
                        };
                        (o0[tx], o1[tx], o2[tx], o3[tx]) = (u, u + v, u - v, -v);
                    }
                }
            }
        }
    }
}

/// Length of a batch's transformed input: per group of images `16 × Ci × (tiles of the group)`.
fn transformed_len(plan: &Plan) -> usize {
    16 * plan.in_channels * plan.tiles * plan.batch
}

/// `Y = conv(x, kernel) (+ bias)` over the batch, groups of images in parallel; with `keep`, also
/// the transformed input (groups one after the other) for the kernel gradient.
fn forward(
    plan: &Plan,
    x: &[f32],
    kernel: &[f32],
    bias: Option<&[f32]>,
    keep: bool,
) -> (Vec<f32>, Option<Vec<f32>>) {
    let (ci, co) = (plan.in_channels, plan.out_channels);
    let transformed = kernel_transform(kernel, co, ci);
    let mut out = vec![0f32; plan.batch * co * plan.plane()];
    let columns = plan.group * plan.tiles;
    let mut kept = keep.then(|| vec![0f32; transformed_len(plan)]);
    let group_transformed = 16 * ci * columns;
    // Each group transforms into its chunk of `kept`, or without `keep` into its worker's buffer.
    let targets: Vec<Option<&mut [f32]>> = match kept.as_mut() {
        Some(all) => all.chunks_mut(group_transformed).map(Some).collect(),
        None => (0..plan.batch.div_ceil(plan.group)).map(|_| None).collect(),
    };
    out.par_chunks_mut(plan.group * co * plan.plane())
        .zip(x.par_chunks(plan.group * ci * plan.plane()))
        .zip(targets)
        .for_each_init(
            || (Vec::new(), vec![0f32; 16 * co * columns], Vec::new()),
            |(own, products, scratch), ((y, images), target)| {
                let count = images.len() / (ci * plan.plane());
                let columns = count * plan.tiles;
                let inputs: &mut [f32] = match target {
                    Some(target) => target,
                    None => {
                        own.resize(group_transformed, 0.0);
                        own
                    }
                };
                input_transform(plan, images, ci, inputs, scratch);
                for xi in 0..16 {
                    matmul(
                        &mut products[xi * co * columns..(xi + 1) * co * columns],
                        false,
                        (co, columns, ci),
                        &transformed[xi * co * ci..],
                        (ci, 1),
                        &inputs[xi * ci * columns..],
                        (columns, 1),
                        false,
                    );
                }
                output_transform(plan, &products[..16 * co * columns], bias, y, scratch);
            },
        );
    (out, kept)
}

/// Where the kernel gradient reads the transformed input from.
#[derive(Clone, Copy)]
enum Inputs<'a> {
    /// Transformed here from the images.
    Images(&'a [f32]),
    /// Kept from the forward pass.
    Transformed(&'a [f32]),
}

/// `∂K` `[Co, Ci, 3, 3]` summed over the batch, per-worker partial sums added at the end.
fn weight_gradient(plan: &Plan, inputs: Inputs<'_>, gradient: &[f32]) -> Vec<f32> {
    let (ci, co) = (plan.in_channels, plan.out_channels);
    let columns = plan.group * plan.tiles;
    let pairs = ci * co;
    let (values, chunk) = match inputs {
        Inputs::Images(x) => (x, plan.group * ci * plan.plane()),
        Inputs::Transformed(v) => (v, 16 * ci * columns),
    };
    let transformed = values
        .par_chunks(chunk)
        .zip(gradient.par_chunks(plan.group * co * plan.plane()))
        .fold(
            || {
                (
                    vec![0f32; 16 * pairs],
                    Vec::new(),
                    vec![0f32; 16 * co * columns],
                    Vec::new(),
                )
            },
            |(mut sum, mut own, mut gradients, mut scratch), (values, dy)| {
                let count = dy.len() / (co * plan.plane());
                let columns = count * plan.tiles;
                let transformed_inputs: &[f32] = match inputs {
                    Inputs::Images(_) => {
                        own.resize(16 * ci * columns, 0.0);
                        input_transform(plan, values, ci, &mut own, &mut scratch);
                        &own
                    }
                    Inputs::Transformed(_) => values,
                };
                gradient_transform(plan, dy, &mut gradients, &mut scratch);
                for xi in 0..16 {
                    // ∂U[ξ] += D[ξ] · V[ξ]ᵀ, Vᵀ read through strides.
                    matmul(
                        &mut sum[xi * pairs..(xi + 1) * pairs],
                        true,
                        (co, ci, columns),
                        &gradients[xi * co * columns..],
                        (columns, 1),
                        &transformed_inputs[xi * ci * columns..],
                        (1, columns),
                        false,
                    );
                }
                (sum, own, gradients, scratch)
            },
        )
        .map(|(sum, ..)| sum)
        .reduce(
            || vec![0f32; 16 * pairs],
            |mut a, b| {
                a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
                a
            },
        );
    kernel_transform_adjoint(&transformed, pairs)
}

/// A convolution input in the transformed domain, kept by [`winograd_conv2d_keeping_input`]
/// so the kernel gradient need not transform it again.
#[derive(Debug, Clone)]
pub struct WinogradInput {
    values: Vec<f32>,
    plan: Plan,
}

fn checked_plan(x: &Tensor, kernel: &Tensor) -> Result<Plan> {
    if !winograd_supports(x.dims(), kernel.dims(), 1, 1) {
        bail!(
            "winograd convolution: input {:?} and kernel {:?} are not a 3×3, stride 1, padding 1 case",
            x.dims(),
            kernel.dims()
        )
    }
    let (batch, in_channels, height, width) = x.dims4()?;
    Ok(Plan::new(batch, in_channels, kernel.dim(0)?, height, width))
}

/// The forward convolution behind [`winograd_conv2d`] and [`winograd_conv2d_keeping_input`].
fn run_forward(
    x: &Tensor,
    kernel: &Tensor,
    bias: Option<&Tensor>,
    keep: bool,
) -> Result<(Tensor, Option<WinogradInput>)> {
    let plan = checked_plan(x, kernel)?;
    let bias = bias.map(|b| b.to_vec1::<f32>()).transpose()?;
    if bias.as_ref().is_some_and(|b| b.len() != plan.out_channels) {
        bail!(
            "winograd convolution: bias does not fit {} output channels",
            plan.out_channels
        )
    }
    let (out, kept) = with_values(&[x, kernel], "winograd convolution", |v| {
        Ok(forward(&plan, v[0], v[1], bias.as_deref(), keep))
    })?;
    let shape = Shape::from((plan.batch, plan.out_channels, plan.height, plan.width));
    Ok((
        Tensor::from_vec(out, shape, x.device())?,
        kept.map(|values| WinogradInput { values, plan }),
    ))
}

/// `conv2d(x, kernel) (+ bias)` with stride 1 and padding 1, graph-free; see
/// [`winograd_supports`] for the shapes it takes.
pub fn winograd_conv2d(x: &Tensor, kernel: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    Ok(run_forward(x, kernel, bias, false)?.0)
}

/// [`winograd_conv2d`] that also returns its input in the transformed domain, for
/// [`winograd_conv2d_weight_gradient_from`].
pub fn winograd_conv2d_keeping_input(
    x: &Tensor,
    kernel: &Tensor,
    bias: Option<&Tensor>,
) -> Result<(Tensor, WinogradInput)> {
    let (y, kept) = run_forward(x, kernel, bias, true)?;
    Ok((y, kept.expect("kept on request")))
}

/// [`winograd_conv2d_weight_gradient`] from the transformed input a forward pass kept.
pub fn winograd_conv2d_weight_gradient_from(
    input: &WinogradInput,
    grad: &Tensor,
) -> Result<Tensor> {
    let plan = input.plan;
    let (batch, out_channels, height, width) = grad.dims4()?;
    if (batch, out_channels, height, width)
        != (plan.batch, plan.out_channels, plan.height, plan.width)
    {
        bail!(
            "winograd weight gradient: gradient {:?} does not fit the kept input",
            grad.dims()
        )
    }
    let out = with_values(&[grad], "winograd weight gradient", |v| {
        Ok(weight_gradient(
            &plan,
            Inputs::Transformed(&input.values),
            v[0],
        ))
    })?;
    let dims = [out_channels, plan.in_channels, 3, 3];
    Tensor::from_vec(out, dims.as_slice(), grad.device())
}

/// The input gradient of [`winograd_conv2d`]: the convolution of `grad` with the kernel
/// flipped in space and with its channel axes swapped.
pub fn winograd_conv2d_input_gradient(grad: &Tensor, kernel: &Tensor) -> Result<Tensor> {
    let flipped = kernel.flip(&[2, 3])?.transpose(0, 1)?.contiguous()?;
    winograd_conv2d(grad, &flipped, None)
}

/// The kernel gradient `[Co, Ci, 3, 3]` of [`winograd_conv2d`] at input `x` for output
/// gradient `grad`, summed over the batch.
pub fn winograd_conv2d_weight_gradient(x: &Tensor, grad: &Tensor) -> Result<Tensor> {
    let (batch, in_channels, height, width) = x.dims4()?;
    let (grad_batch, out_channels, grad_height, grad_width) = grad.dims4()?;
    if (grad_batch, grad_height, grad_width) != (batch, height, width) || in_channels < 16 {
        bail!(
            "winograd weight gradient: input {:?} and gradient {:?} do not fit",
            x.dims(),
            grad.dims()
        )
    }
    let kernel_dims = [out_channels, in_channels, 3, 3];
    if !winograd_supports(x.dims(), &kernel_dims, 1, 1) {
        bail!(
            "winograd weight gradient: input {:?} is not supported",
            x.dims()
        )
    }
    let plan = Plan::new(batch, in_channels, out_channels, height, width);
    let out = with_values(&[x, grad], "winograd weight gradient", |v| {
        Ok(weight_gradient(&plan, Inputs::Images(v[0]), v[1]))
    })?;
    Tensor::from_vec(out, kernel_dims.as_slice(), x.device())
}
