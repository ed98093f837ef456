//! CPU convolution kernels as candle custom ops: im2col / col2im around the `gemm` crate.
//!
//! candle 0.11 computes the input gradient of a convolution and every transposed convolution
//! with a direct loop (≈0.5 GFLOP/s here), which dominated training steps and CROWN's backward
//! pass. These ops express all three products a convolution needs as per-sample matrix
//! products, spread over samples with rayon:
//! - forward:            `Y_n = K · im2col(X_n)`
//! - transposed forward: `Z_n = col2im(Kᵀ · A_n)` (the input gradient, and CROWN's backward step)
//! - weight gradient:    `dK = Σ_n dY_n · im2col(X_n)ᵀ`
//!
//! Where a sample's im2col matrix is small (`cnn-small`'s first layer, which every training
//! attack runs forward and backward at each step), the forward and transposed products take a
//! group of samples' matrices side by side in one product.

use super::channel::channel_sum;
use super::{contiguous_f32, masked, matmul, with_values};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Elements of the im2col matrices a convolution or a transposed convolution forms for one
/// product: smaller per-sample matrices are grouped up to this size (256 KiB, within a core's
/// L2 cache).
const GROUPED_COLUMNS: usize = 1 << 16;

/// Sizes of one convolution (square kernel, equal stride and padding in both directions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Geometry {
    batch: usize,
    in_channels: usize,
    in_height: usize,
    in_width: usize,
    out_channels: usize,
    out_height: usize,
    out_width: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
}

impl Geometry {
    /// Rows of the im2col matrix: one per (input channel, kernel row, kernel column).
    fn patch_len(&self) -> usize {
        self.in_channels * self.kernel * self.kernel
    }
    fn in_plane(&self) -> usize {
        self.in_channels * self.in_height * self.in_width
    }
    fn out_positions(&self) -> usize {
        self.out_height * self.out_width
    }
    fn out_plane(&self) -> usize {
        self.out_channels * self.out_positions()
    }

    /// Output positions `lo..hi` (along one axis of `out` positions) whose input coordinate at
    /// kernel offset `offset` lies inside `0..size`.
    #[inline]
    fn valid_outputs(&self, offset: usize, size: usize, out: usize) -> (usize, usize) {
        // position(o) = o·s + offset − p must satisfy 0 ≤ position < size.
        let lo = self.padding.saturating_sub(offset).div_ceil(self.stride);
        let hi = match (size + self.padding).checked_sub(offset + 1) {
            Some(last) => (last / self.stride + 1).min(out),
            None => 0,
        };
        (lo.min(hi), hi)
    }

    /// `cols[(c, ki, kj), (oh, ow)] = x[c, oh·s − p + ki, ow·s − p + kj]` (zero outside), the
    /// matrix starting at column `offset` of `cols`, whose rows are `row_stride` long (several
    /// samples' matrices side by side).
    fn im2col(&self, image: &[f32], cols: &mut [f32], (offset, row_stride): (usize, usize)) {
        let positions = self.out_positions();
        let (s, p) = (self.stride, self.padding);
        for c in 0..self.in_channels {
            let plane = &image[c * self.in_height * self.in_width..];
            for ki in 0..self.kernel {
                let (oh_lo, oh_hi) = self.valid_outputs(ki, self.in_height, self.out_height);
                for kj in 0..self.kernel {
                    let row = (c * self.kernel + ki) * self.kernel + kj;
                    let out_row = &mut cols[row * row_stride + offset..][..positions];
                    out_row[..oh_lo * self.out_width].fill(0.0);
                    out_row[oh_hi * self.out_width..].fill(0.0);
                    let (ow_lo, ow_hi) = self.valid_outputs(kj, self.in_width, self.out_width);
                    for oh in oh_lo..oh_hi {
                        let target = &mut out_row[oh * self.out_width..(oh + 1) * self.out_width];
                        target[..ow_lo].fill(0.0);
                        target[ow_hi..].fill(0.0);
                        let ih = oh * s + ki - p;
                        let line = &plane[ih * self.in_width..(ih + 1) * self.in_width];
                        let first = ow_lo * s + kj - p;
                        if s == 1 {
                            target[ow_lo..ow_hi]
                                .copy_from_slice(&line[first..first + (ow_hi - ow_lo)]);
                        } else {
                            for (slot, value) in target[ow_lo..ow_hi]
                                .iter_mut()
                                .zip(line[first..].iter().step_by(s))
                            {
                                *slot = *value;
                            }
                        }
                    }
                }
            }
        }
    }

    /// Adjoint of [`Geometry::im2col`]: accumulates `cols` back into an (already zeroed) image.
    /// The image's matrix starts at column `offset` of `cols`, whose rows are `row_stride` long
    /// (several samples' matrices side by side).
    fn col2im(&self, cols: &[f32], (offset, row_stride): (usize, usize), image: &mut [f32]) {
        let positions = self.out_positions();
        let (s, p) = (self.stride, self.padding);
        for c in 0..self.in_channels {
            let plane = &mut image[c * self.in_height * self.in_width..];
            for ki in 0..self.kernel {
                let (oh_lo, oh_hi) = self.valid_outputs(ki, self.in_height, self.out_height);
                for kj in 0..self.kernel {
                    let row = (c * self.kernel + ki) * self.kernel + kj;
                    let in_row = &cols[row * row_stride + offset..][..positions];
                    let (ow_lo, ow_hi) = self.valid_outputs(kj, self.in_width, self.out_width);
                    for oh in oh_lo..oh_hi {
                        let ih = oh * s + ki - p;
                        let line = &mut plane[ih * self.in_width..(ih + 1) * self.in_width];
                        let source =
                            &in_row[oh * self.out_width + ow_lo..oh * self.out_width + ow_hi];
                        let first = ow_lo * s + kj - p;
                        if s == 1 {
                            for (slot, value) in
                                line[first..first + source.len()].iter_mut().zip(source)
                            {
                                *slot += value;
                            }
                        } else {
                            for (slot, value) in line[first..].iter_mut().step_by(s).zip(source) {
                                *slot += value;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// im2col for one geometry, reading strided rows through a precomputed gather table.
///
/// For strided convolutions the row-by-row copy is a short strided loop per kernel offset and
/// output row (14 elements for `cnn-small`'s first layer), dominated by loop set-up; a flat
/// gather over one table per call is several times faster. Stride-1 rows are contiguous
/// copies already and keep the direct path.
struct Im2col {
    geometry: Geometry,
    /// `table[j]` is 1 + the input index element `j` of the im2col matrix reads, 0 for padding.
    table: Option<Vec<u32>>,
}

impl Im2col {
    fn new(geometry: &Geometry) -> Im2col {
        let g = *geometry;
        // Indices are carried through `im2col` itself as f32 values, exact below 2²⁴.
        let table = (g.stride != 1 && g.in_plane() < (1 << 24)).then(|| {
            let indices: Vec<f32> = (1..=g.in_plane()).map(|i| i as f32).collect();
            let mut cols = vec![0f32; g.patch_len() * g.out_positions()];
            g.im2col(&indices, &mut cols, (0, g.out_positions()));
            cols.into_iter().map(|v| v as u32).collect()
        });
        Im2col { geometry: g, table }
    }

    /// Fills the im2col matrix of one image into `cols` at column `offset`, rows `row_stride`
    /// long (several samples' matrices side by side), using `padded` as scratch.
    fn fill(
        &self,
        image: &[f32],
        cols: &mut [f32],
        (offset, row_stride): (usize, usize),
        padded: &mut Vec<f32>,
    ) {
        match &self.table {
            Some(table) => {
                padded.clear();
                padded.push(0.0);
                padded.extend_from_slice(&image[..self.geometry.in_plane()]);
                assert_eq!(padded.len(), self.geometry.in_plane() + 1);
                let positions = self.geometry.out_positions();
                for (row, indices) in table.chunks(positions).enumerate() {
                    let target = &mut cols[row * row_stride + offset..][..positions];
                    for (slot, &index) in target.iter_mut().zip(indices) {
                        // SAFETY: `new` builds every entry as 0 or 1 + an index into the image,
                        // so below `in_plane + 1 = padded.len()` (asserted above).
                        *slot = unsafe { *padded.get_unchecked(index as usize) };
                    }
                }
            }
            None => self.geometry.im2col(image, cols, (offset, row_stride)),
        }
    }

    /// Adjoint of [`Im2col::fill`]: accumulates the matrix at column `offset` of `cols` (rows
    /// `row_stride` long) back into an (already zeroed) `image`, using `padded` as scratch.
    /// Strided rows scatter through the gather table: the direct path's short strided loops
    /// cost several times more per element.
    fn scatter(
        &self,
        cols: &[f32],
        (offset, row_stride): (usize, usize),
        image: &mut [f32],
        padded: &mut Vec<f32>,
    ) {
        let g = &self.geometry;
        match &self.table {
            Some(table) => {
                let (in_plane, positions) = (g.in_plane(), g.out_positions());
                padded.clear();
                padded.resize(in_plane + 1, 0.0);
                for (row, indices) in table.chunks(positions).enumerate() {
                    let values = &cols[row * row_stride + offset..][..positions];
                    for (&value, &index) in values.iter().zip(indices) {
                        // SAFETY: `new` builds every entry as 0 or 1 + an index into the
                        // image, so below `in_plane + 1 = padded.len()`.
                        unsafe { *padded.get_unchecked_mut(index as usize) += value };
                    }
                }
                for (slot, value) in image[..in_plane].iter_mut().zip(&padded[1..]) {
                    *slot += value;
                }
            }
            None => g.col2im(cols, (offset, row_stride), image),
        }
    }
}

/// Geometry of a forward convolution of `x` `[B, Ci, H, W]` with `kernel` `[Co, Ci, k, k]`.
fn forward_geometry(
    x: &Layout,
    kernel: &Layout,
    stride: usize,
    padding: usize,
) -> Result<Geometry> {
    let (batch, in_channels, in_height, in_width) = x.shape().dims4()?;
    let (out_channels, kernel_channels, kernel, kernel_w) = kernel.shape().dims4()?;
    if kernel_channels != in_channels || kernel != kernel_w {
        bail!(
            "conv2d: kernel {:?} does not fit input {:?}",
            kernel.to_string(),
            x.shape()
        )
    }
    let out = |size: usize| match (size + 2 * padding).checked_sub(kernel) {
        Some(room) => Ok(room / stride + 1),
        None => bail!("conv2d: kernel {kernel} larger than padded input {size}"),
    };
    Ok(Geometry {
        batch,
        in_channels,
        in_height,
        in_width,
        out_channels,
        out_height: out(in_height)?,
        out_width: out(in_width)?,
        kernel,
        stride,
        padding,
    })
}

/// Where a convolution's per-sample im2col matrices come from.
#[derive(Clone, Copy)]
enum Patches<'a> {
    /// Built from the images, sample by sample.
    Images(&'a [f32]),
    /// Precomputed by [`conv2d_columns`], `[B, patch, positions]`.
    Columns(&'a [f32]),
}

impl Patches<'_> {
    /// Chunk length per sample.
    fn sample_len(&self, g: &Geometry) -> usize {
        match self {
            Patches::Images(_) => g.in_plane(),
            Patches::Columns(_) => g.patch_len() * g.out_positions(),
        }
    }
    fn values(&self) -> &[f32] {
        match self {
            Patches::Images(values) | Patches::Columns(values) => values,
        }
    }
    /// The im2col matrix of one sample's chunk: `chunk` itself, or built into `cols`.
    fn matrix<'c>(
        &self,
        im2col: &Im2col,
        chunk: &'c [f32],
        cols: &'c mut Vec<f32>,
        padded: &mut Vec<f32>,
    ) -> &'c [f32] {
        match self {
            Patches::Columns(_) => chunk,
            Patches::Images(_) => {
                let g = &im2col.geometry;
                cols.resize(g.patch_len() * g.out_positions(), 0.0);
                im2col.fill(chunk, cols, (0, g.out_positions()), padded);
                cols
            }
        }
    }
}

/// `Y_n = K · im2col(X_n) [+ bias]` for every sample, spread over samples; small layers a
/// group of samples per product (see [`group_size`]).
fn convolve(
    g: &Geometry,
    patches: Patches<'_>,
    kernel: &[f32],
    bias: Option<&[f32]>,
) -> (CpuStorage, Shape) {
    // Each sample's output is initialised in the worker, while it is in cache; a zeroed
    // `vec!` would cost a separate pass over the whole (large) output.
    let mut out = Vec::with_capacity(g.batch * g.out_plane());
    let (patch, positions) = (g.patch_len(), g.out_positions());
    let im2col = Im2col::new(g);
    let group = group_size(g, patch * positions);
    let sample_len = patches.sample_len(g);
    out.spare_capacity_mut()[..g.batch * g.out_plane()]
        .par_chunks_mut(g.out_plane() * group)
        .zip(patches.values().par_chunks(sample_len * group))
        .for_each_init(
            || (Vec::new(), Vec::new(), Vec::new()),
            |(cols, product, padded), (y, chunk)| {
                if group == 1 {
                    let cols = patches.matrix(&im2col, chunk, cols, padded);
                    convolve_sample(g, cols, kernel, bias, y);
                    return;
                }
                let samples = chunk.len() / sample_len.max(1);
                let width = samples * positions;
                // Row r holds every sample's row r side by side.
                cols.resize(patch * width, 0.0);
                for (i, sample) in chunk.chunks(sample_len).enumerate() {
                    match patches {
                        Patches::Images(_) => {
                            im2col.fill(sample, cols, (i * positions, width), padded)
                        }
                        Patches::Columns(_) => {
                            for (row, values) in sample.chunks(positions).enumerate() {
                                cols[row * width + i * positions..][..positions]
                                    .copy_from_slice(values);
                            }
                        }
                    }
                }
                product.resize(g.out_channels * width, 0.0);
                matmul(
                    product,
                    false,
                    (g.out_channels, width, patch),
                    kernel,
                    (patch, 1),
                    cols,
                    (width, 1),
                    false,
                );
                for (i, y) in y.chunks_mut(g.out_plane()).enumerate() {
                    for (c, row) in y.chunks_mut(positions).enumerate() {
                        let values = &product[c * width + i * positions..][..positions];
                        match bias {
                            Some(bias) => {
                                for (slot, value) in row.iter_mut().zip(values) {
                                    slot.write(bias[c] + value);
                                }
                            }
                            None => {
                                for (slot, value) in row.iter_mut().zip(values) {
                                    slot.write(*value);
                                }
                            }
                        }
                    }
                }
            },
        );
    // SAFETY: every sample's chunk was initialised by its worker.
    unsafe { out.set_len(g.batch * g.out_plane()) };
    let shape = Shape::from((g.batch, g.out_channels, g.out_height, g.out_width));
    (CpuStorage::F32(out), shape)
}

/// `y = K · cols [+ bias]` for one sample's im2col matrix.
fn convolve_sample(
    g: &Geometry,
    cols: &[f32],
    kernel: &[f32],
    bias: Option<&[f32]>,
    y: &mut [MaybeUninit<f32>],
) {
    let (patch, positions) = (g.patch_len(), g.out_positions());
    // The bias seeds the product, so it costs no separate pass either.
    let zeros = [0f32];
    let seeds = bias.unwrap_or(&zeros);
    for (c, row) in y.chunks_mut(positions).enumerate() {
        row.fill(MaybeUninit::new(seeds[c.min(seeds.len() - 1)]));
    }
    // SAFETY: every element was initialised just above.
    let y = unsafe { &mut *(y as *mut [MaybeUninit<f32>] as *mut [f32]) };
    matmul(
        y,
        bias.is_some(),
        (g.out_channels, positions, patch),
        kernel,
        (patch, 1),
        cols,
        (positions, 1),
        false,
    );
}

/// Forward convolution (no bias) as a differentiable custom op.
struct Conv2dOp {
    stride: usize,
    padding: usize,
}

impl CustomOp2 for Conv2dOp {
    fn name(&self) -> &'static str {
        "cthpo-conv2d"
    }

    fn cpu_fwd(
        &self,
        x_storage: &CpuStorage,
        x_layout: &Layout,
        k_storage: &CpuStorage,
        k_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = forward_geometry(x_layout, k_layout, self.stride, self.padding)?;
        let x = contiguous_f32(x_storage, x_layout, "conv2d input")?;
        let kernel = contiguous_f32(k_storage, k_layout, "conv2d kernel")?;
        Ok(convolve(&g, Patches::Images(x), kernel, None))
    }

    fn bwd(
        &self,
        x: &Tensor,
        kernel: &Tensor,
        _result: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (_, _, height, width) = x.dims4()?;
        // The network input needs no gradient; candle's own conv computes it regardless.
        let grad_x = if x.track_op() {
            Some(conv_transpose2d(
                &grad,
                kernel,
                self.stride,
                self.padding,
                height,
                width,
            )?)
        } else {
            None
        };
        let grad_kernel = if kernel.track_op() {
            Some(conv2d_weight_gradient(
                x,
                &grad,
                kernel.dim(2)?,
                self.stride,
                self.padding,
            )?)
        } else {
            None
        };
        Ok((grad_x, grad_kernel))
    }
}

/// Forward convolution plus a per-output-channel bias, as one differentiable custom op.
struct Conv2dBiasOp {
    stride: usize,
    padding: usize,
}

impl CustomOp3 for Conv2dBiasOp {
    fn name(&self) -> &'static str {
        "cthpo-conv2d-bias"
    }

    fn cpu_fwd(
        &self,
        x_storage: &CpuStorage,
        x_layout: &Layout,
        k_storage: &CpuStorage,
        k_layout: &Layout,
        b_storage: &CpuStorage,
        b_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = forward_geometry(x_layout, k_layout, self.stride, self.padding)?;
        let x = contiguous_f32(x_storage, x_layout, "conv2d input")?;
        let kernel = contiguous_f32(k_storage, k_layout, "conv2d kernel")?;
        let bias = contiguous_f32(b_storage, b_layout, "conv2d bias")?;
        if bias.len() != g.out_channels {
            bail!(
                "conv2d: {} biases for {} output channels",
                bias.len(),
                g.out_channels
            )
        }
        Ok(convolve(&g, Patches::Images(x), kernel, Some(bias)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        kernel: &Tensor,
        bias: &Tensor,
        result: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let unbiased = Conv2dOp {
            stride: self.stride,
            padding: self.padding,
        };
        let (grad_x, grad_kernel) = unbiased.bwd(x, kernel, result, grad)?;
        let grad_bias = if bias.track_op() {
            Some(channel_sum(&grad.contiguous()?)?)
        } else {
            None
        };
        Ok((grad_x, grad_kernel, grad_bias))
    }
}

/// Samples whose per-sample matrices (`len` elements each) share one product: small layers
/// (an attack's first convolution: 16×16 kernels over 196 positions) spend more in gemm's
/// per-call set-up than in the product, so a group of samples lays its matrices side by side.
fn group_size(g: &Geometry, len: usize) -> usize {
    (GROUPED_COLUMNS / len.max(1)).clamp(1, g.batch.div_ceil(super::kernel_threads()).max(1))
}

/// `X_n = col2im(Kᵀ · A_n)` for every sample: the transposed convolution of `a`
/// `[B, Co, Ho, Wo]`, its coefficients multiplied by `[mask ≥ 0]` first when `mask` (a
/// ReLU's input, the shape of `a`) is given.
fn transpose_convolve(g: &Geometry, a: &[f32], mask: Option<&[f32]>, kernel: &[f32]) -> Vec<f32> {
    let (patch, positions) = (g.patch_len(), g.out_positions());
    let im2col = Im2col::new(g);
    let group = group_size(g, patch * positions);
    let len = g.batch * g.in_plane();
    let mut out = Vec::with_capacity(len);
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(g.in_plane() * group)
        .zip(a.par_chunks(g.out_plane() * group))
        .enumerate()
        .for_each_init(
            || (Vec::new(), Vec::new(), Vec::new()),
            |(side_by_side, cols, padded), (chunk, (images, coefficients))| {
                let samples = coefficients.len() / g.out_plane().max(1);
                let width = samples * positions;
                // Channel-major: row c holds every sample's coefficients of channel c.
                let rhs: &[f32] = if samples == 1 && mask.is_none() {
                    coefficients
                } else {
                    side_by_side.clear();
                    let start = chunk * group * g.out_plane();
                    for c in 0..g.out_channels {
                        for (i, sample) in coefficients.chunks(g.out_plane()).enumerate() {
                            let values = &sample[c * positions..][..positions];
                            match mask {
                                Some(mask) => {
                                    let at = start + i * g.out_plane() + c * positions;
                                    let inputs = &mask[at..at + positions];
                                    side_by_side.extend(
                                        (0..positions).map(|p| masked(values[p], inputs[p] >= 0.0)),
                                    );
                                }
                                None => side_by_side.extend_from_slice(values),
                            }
                        }
                    }
                    side_by_side
                };
                cols.resize(patch * width, 0.0);
                // Kᵀ is read through strides: element (r, c) of Kᵀ is K[c, r].
                matmul(
                    cols,
                    false,
                    (patch, width, g.out_channels),
                    kernel,
                    (1, patch),
                    rhs,
                    (width, 1),
                    false,
                );
                images.fill(MaybeUninit::new(0.0));
                // SAFETY: every element was initialised just above.
                let images = unsafe { &mut *(images as *mut [MaybeUninit<f32>] as *mut [f32]) };
                for (i, image) in images.chunks_mut(g.in_plane()).enumerate() {
                    im2col.scatter(cols, (i * positions, width), image, padded);
                }
            },
        );
    // SAFETY: every sample's image was initialised by its worker.
    unsafe { out.set_len(len) };
    out
}

/// Transposed convolution (the adjoint of [`Conv2dOp`]) with an explicit output size.
struct ConvTranspose2dOp {
    stride: usize,
    padding: usize,
    out_height: usize,
    out_width: usize,
}

impl ConvTranspose2dOp {
    /// Geometry of the forward convolution this op is the adjoint of.
    fn geometry(&self, a: &Layout, kernel: &Layout) -> Result<Geometry> {
        let (batch, channels, height, width) = a.shape().dims4()?;
        let (out_channels, in_channels, size, _) = kernel.shape().dims4()?;
        if channels != out_channels {
            bail!("conv_transpose2d: {channels} input channels for a kernel with {out_channels}")
        }
        let g = Geometry {
            batch,
            in_channels,
            in_height: self.out_height,
            in_width: self.out_width,
            out_channels,
            out_height: height,
            out_width: width,
            kernel: size,
            stride: self.stride,
            padding: self.padding,
        };
        let probe = forward_geometry(
            &Layout::contiguous((1, in_channels, self.out_height, self.out_width)),
            kernel,
            self.stride,
            self.padding,
        )?;
        if (probe.out_height, probe.out_width) != (height, width) {
            bail!(
                "conv_transpose2d: a {}x{} output does not convolve to the {height}x{width} input",
                self.out_height,
                self.out_width
            )
        }
        Ok(g)
    }
}

impl CustomOp2 for ConvTranspose2dOp {
    fn name(&self) -> &'static str {
        "cthpo-conv-transpose2d"
    }

    fn cpu_fwd(
        &self,
        a_storage: &CpuStorage,
        a_layout: &Layout,
        k_storage: &CpuStorage,
        k_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = self.geometry(a_layout, k_layout)?;
        let a = contiguous_f32(a_storage, a_layout, "conv_transpose2d input")?;
        let kernel = contiguous_f32(k_storage, k_layout, "conv_transpose2d kernel")?;
        let out = transpose_convolve(&g, a, None, kernel);
        let shape = Shape::from((g.batch, g.in_channels, g.in_height, g.in_width));
        Ok((CpuStorage::F32(out), shape))
    }

    fn bwd(
        &self,
        a: &Tensor,
        kernel: &Tensor,
        _result: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let grad_a = conv2d(&grad, kernel, self.stride, self.padding)?;
        let grad_kernel = conv2d_weight_gradient(
            &grad,
            &a.contiguous()?,
            kernel.dim(2)?,
            self.stride,
            self.padding,
        )?;
        Ok((Some(grad_a), Some(grad_kernel)))
    }
}

/// `dK = Σ_n dY_n · im2col(X_n)ᵀ`: the kernel gradient of a convolution (not differentiable).
struct WeightGradientOp {
    kernel: usize,
    stride: usize,
    padding: usize,
}

impl CustomOp2 for WeightGradientOp {
    fn name(&self) -> &'static str {
        "cthpo-conv2d-weight-gradient"
    }

    fn cpu_fwd(
        &self,
        x_storage: &CpuStorage,
        x_layout: &Layout,
        dy_storage: &CpuStorage,
        dy_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (batch, in_channels, in_height, in_width) = x_layout.shape().dims4()?;
        let (dy_batch, out_channels, out_height, out_width) = dy_layout.shape().dims4()?;
        if dy_batch != batch {
            bail!("conv2d weight gradient: batch {batch} vs gradient batch {dy_batch}")
        }
        let g = Geometry {
            batch,
            in_channels,
            in_height,
            in_width,
            out_channels,
            out_height,
            out_width,
            kernel: self.kernel,
            stride: self.stride,
            padding: self.padding,
        };
        let x = contiguous_f32(x_storage, x_layout, "conv2d weight gradient input")?;
        let dy = contiguous_f32(dy_storage, dy_layout, "conv2d weight gradient")?;
        let total = kernel_gradient(&g, Patches::Images(x), dy);
        let shape = Shape::from((out_channels, in_channels, self.kernel, self.kernel));
        Ok((CpuStorage::F32(total), shape))
    }
}

/// `dK = Σ_n dY_n · im2col(X_n)ᵀ`, each worker summing its share of samples into its own
/// buffer, the buffers added at the end.
fn kernel_gradient(g: &Geometry, patches: Patches<'_>, dy: &[f32]) -> Vec<f32> {
    let (patch, positions) = (g.patch_len(), g.out_positions());
    let kernel_len = g.out_channels * patch;
    let im2col = Im2col::new(g);
    let workers = super::kernel_threads().max(1).min(g.batch.max(1));
    let per_worker = g.batch.div_ceil(workers);
    let sample_len = patches.sample_len(g);
    let partials: Vec<Vec<f32>> = (0..workers)
        .into_par_iter()
        .map(|worker| {
            let mut sum = vec![0f32; kernel_len];
            let (mut cols, mut padded) = (Vec::new(), Vec::new());
            let start = worker * per_worker;
            for n in start..(start + per_worker).min(g.batch) {
                let chunk = &patches.values()[n * sample_len..(n + 1) * sample_len];
                let cols = patches.matrix(&im2col, chunk, &mut cols, &mut padded);
                let gradient = &dy[n * g.out_plane()..(n + 1) * g.out_plane()];
                matmul(
                    &mut sum,
                    true,
                    (g.out_channels, patch, positions),
                    gradient,
                    (positions, 1),
                    cols,
                    (1, positions),
                    false,
                );
            }
            sum
        })
        .collect();
    let mut total = vec![0f32; kernel_len];
    for partial in partials {
        for (t, p) in total.iter_mut().zip(partial) {
            *t += p;
        }
    }
    total
}

/// The im2col matrices `[B, Ci·k·k, Ho·Wo]` of a batch, graph-free: a training step builds them
/// once for a convolution's forward pass and its kernel gradient
/// ([`conv2d_from_columns`], [`conv2d_weight_gradient_from_columns`]).
pub fn conv2d_columns(x: &Tensor, kernel: usize, stride: usize, padding: usize) -> Result<Tensor> {
    let (batch, channels, _, _) = x.dims4()?;
    let probe = Layout::contiguous((1, channels, kernel, kernel));
    let g = forward_geometry(x.layout(), &probe, stride, padding)?;
    let (patch, positions) = (g.patch_len(), g.out_positions());
    let im2col = Im2col::new(&g);
    let out = with_values(&[x], "conv2d columns", |v| {
        let len = batch * patch * positions;
        let mut out: Vec<f32> = Vec::with_capacity(len);
        out.spare_capacity_mut()[..len]
            .par_chunks_mut(patch * positions)
            .zip(v[0].par_chunks(g.in_plane()))
            .for_each_init(Vec::new, |padded, (cols, image)| {
                // Zeroed in the worker, in cache, rather than in a pass over the whole buffer.
                cols.fill(MaybeUninit::new(0.0));
                // SAFETY: every element was initialised just above.
                let cols = unsafe { &mut *(cols as *mut [MaybeUninit<f32>] as *mut [f32]) };
                im2col.fill(image, cols, (0, positions), padded)
            });
        // SAFETY: every sample's chunk was initialised by its worker.
        unsafe { out.set_len(len) };
        Ok(out)
    })?;
    Tensor::from_vec(out, (batch, patch, positions), x.device())
}

/// Geometry of a convolution read from its im2col `columns` `[B, patch, positions]`.
fn columns_geometry(
    columns: &Tensor,
    (out_channels, kernel): (usize, usize),
    (out_height, out_width): (usize, usize),
) -> Result<Geometry> {
    let (batch, patch, positions) = columns.dims3()?;
    if kernel == 0 || patch % (kernel * kernel) != 0 || positions != out_height * out_width {
        bail!(
            "conv2d columns {:?} do not fit a {kernel}x{kernel} kernel and a {out_height}x{out_width} output",
            columns.dims()
        )
    }
    // Only the output side and the patch length matter when the columns are given.
    Ok(Geometry {
        batch,
        in_channels: patch / (kernel * kernel),
        in_height: 0,
        in_width: 0,
        out_channels,
        out_height,
        out_width,
        kernel,
        stride: 1,
        padding: 0,
    })
}

/// [`conv2d_bias`] (or [`conv2d`] without `bias`) from the input's [`conv2d_columns`], as
/// `[B, Co, out_height, out_width]`; graph-free.
pub fn conv2d_from_columns(
    columns: &Tensor,
    kernel: &Tensor,
    bias: Option<&Tensor>,
    out_size: (usize, usize),
) -> Result<Tensor> {
    let (out_channels, _, size, _) = kernel.dims4()?;
    let g = columns_geometry(columns, (out_channels, size), out_size)?;
    let bias = bias.map(|b| b.to_vec1::<f32>()).transpose()?;
    let (storage, shape) = with_values(&[columns, kernel], "conv2d from columns", |v| {
        Ok(convolve(&g, Patches::Columns(v[0]), v[1], bias.as_deref()))
    })?;
    let CpuStorage::F32(values) = storage else {
        bail!("conv2d from columns: f32 output expected")
    };
    Tensor::from_vec(values, shape, columns.device())
}

/// [`conv2d_weight_gradient`] from the input's [`conv2d_columns`]; graph-free.
pub fn conv2d_weight_gradient_from_columns(
    columns: &Tensor,
    grad: &Tensor,
    kernel: usize,
) -> Result<Tensor> {
    let (_, out_channels, out_height, out_width) = grad.dims4()?;
    let g = columns_geometry(columns, (out_channels, kernel), (out_height, out_width))?;
    let total = with_values(
        &[columns, grad],
        "conv2d weight gradient from columns",
        |v| Ok(kernel_gradient(&g, Patches::Columns(v[0]), v[1])),
    )?;
    let shape = (out_channels, g.in_channels, kernel, kernel);
    Tensor::from_vec(total, shape, columns.device())
}

/// Convolution of `x` `[B, Ci, H, W]` with `kernel` `[Co, Ci, k, k]` (no bias), differentiable
/// in both arguments.
pub fn conv2d(x: &Tensor, kernel: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    x.contiguous()?
        .apply_op2(&kernel.contiguous()?, Conv2dOp { stride, padding })
}

/// Convolution of `x` `[B, Ci, H, W]` with `kernel` `[Co, Ci, k, k]` plus `bias` `[Co]`,
/// differentiable in all three.
pub fn conv2d_bias(
    x: &Tensor,
    kernel: &Tensor,
    bias: &Tensor,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    x.contiguous()?.apply_op3(
        &kernel.contiguous()?,
        &bias.contiguous()?,
        Conv2dBiasOp { stride, padding },
    )
}

/// Adjoint of [`conv2d`]: maps `[N, Co, Ho, Wo]` back to `[N, Ci, out_height, out_width]` with
/// the same kernel `[Co, Ci, k, k]`; differentiable in both arguments.
pub fn conv_transpose2d(
    a: &Tensor,
    kernel: &Tensor,
    stride: usize,
    padding: usize,
    out_height: usize,
    out_width: usize,
) -> Result<Tensor> {
    a.contiguous()?.apply_op2(
        &kernel.contiguous()?,
        ConvTranspose2dOp {
            stride,
            padding,
            out_height,
            out_width,
        },
    )
}

/// [`conv_transpose2d`] of `a` times `[pre_activation ≥ 0]` (`pre_activation` the input of the
/// ReLU whose output `a` is the gradient of): a ReLU's backward folded into the transposed
/// convolution after it, graph-free.
pub fn relu_masked_conv_transpose2d(
    a: &Tensor,
    pre_activation: &Tensor,
    kernel: &Tensor,
    (stride, padding): (usize, usize),
    (out_height, out_width): (usize, usize),
) -> Result<Tensor> {
    if a.dims() != pre_activation.dims() {
        bail!(
            "relu-masked conv_transpose2d: gradient {:?} and ReLU input {:?} differ",
            a.dims(),
            pre_activation.dims()
        )
    }
    let op = ConvTranspose2dOp {
        stride,
        padding,
        out_height,
        out_width,
    };
    let g = op.geometry(a.layout(), kernel.layout())?;
    let out = with_values(
        &[a, pre_activation, kernel],
        "relu-masked conv_transpose2d",
        |v| Ok(transpose_convolve(&g, v[0], Some(v[1]), v[2])),
    )?;
    Tensor::from_vec(
        out,
        (g.batch, g.in_channels, out_height, out_width),
        a.device(),
    )
}

/// Kernel gradient `[Co, Ci, k, k]` of a convolution of `x` whose output gradient is `grad`
/// (not differentiable); public so benchmarks can time the backward pass's parts on their own.
pub fn conv2d_weight_gradient(
    x: &Tensor,
    grad: &Tensor,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    x.contiguous()?.apply_op2_no_bwd(
        &grad.contiguous()?,
        &WeightGradientOp {
            kernel,
            stride,
            padding,
        },
    )
}
