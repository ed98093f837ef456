//! Graph-free kernels of CROWN's backward bound pass and of its own reverse pass, for the
//! CROWN-IBP training step (`train::backprop::crown_ibp`).
//!
//! Coefficients are `[B, S, …]`: `S` specification rows per sample, each row a linear function
//! of the activation. Rows are independent, so every kernel here works on `R = B·S` rows.

use super::{masked, par_filled, with_values};
use candle_core::{Result, Tensor, bail};
use rayon::prelude::*;

/// CROWN's adaptive relaxation of a ReLU on the box `c ± r`: `(lower slope, upper slope, upper
/// intercept)`, as `bounds::linear::ReluRelaxation` forms it from `l = c − r`, `u = c + r`.
#[inline]
fn relaxation(c: f32, r: f32) -> (f32, f32, f32) {
    let (lower, upper) = (c - r, c + r);
    if lower >= 0.0 {
        (1.0, 1.0, 0.0)
    } else if upper > 0.0 {
        let slope = upper / (upper - lower);
        let steep = f32::from(u8::from(upper > -lower));
        (steep, slope, -slope * lower)
    } else {
        (0.0, 0.0, 0.0)
    }
}

/// The relaxations of a sample's neurons, `[lower slope, upper slope, upper intercept]` each.
fn relaxations(centre: &[f32], radius: &[f32]) -> Vec<[f32; 3]> {
    centre
        .iter()
        .zip(radius)
        .map(|(&c, &r)| {
            let (lower, upper, intercept) = relaxation(c, r);
            [lower, upper, intercept]
        })
        .collect()
}

/// Samples, rows per sample and elements per row of coefficients `[B, S, …]` over an
/// activation `[B, …]` of `per_sample` elements.
fn row_layout(coefficients: &Tensor, per_sample: usize, what: &str) -> Result<(usize, usize)> {
    let dims = coefficients.dims();
    if dims.len() < 3 || per_sample == 0 || dims[2..].iter().product::<usize>() != per_sample {
        bail!("{what}: coefficients {dims:?} for {per_sample} activations per sample")
    }
    Ok((dims[0], dims[1]))
}

/// CROWN's step back through a ReLU whose input box is `centre ± radius` (`[B, …]`): the
/// coefficients `A` `[B, S, …]` of the ReLU's output become `A⁺·slope_l + A⁻·slope_u` on its
/// input, and `A⁻·intercept` (`[B, S]`) joins the bound's constant.
pub fn crown_relu_step(
    coefficients: &Tensor,
    centre: &Tensor,
    radius: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let what = "CROWN relu step";
    let (batch, specs) = row_layout(coefficients, centre.elem_count() / centre.dim(0)?, what)?;
    let dims = coefficients.dims().to_vec();
    let (out, constant) = with_values(&[coefficients, centre, radius], what, |v| {
        let (a, c, r) = (v[0], v[1], v[2]);
        let n = c.len() / batch.max(1);
        let mut out: Vec<f32> = Vec::with_capacity(a.len());
        let mut constant = vec![0f32; batch * specs];
        out.spare_capacity_mut()[..a.len()]
            .par_chunks_mut((specs * n).max(1))
            .zip(constant.par_chunks_mut(specs.max(1)))
            .enumerate()
            .for_each(|(b, (out, constant))| {
                let relaxed = relaxations(&c[b * n..(b + 1) * n], &r[b * n..(b + 1) * n]);
                for (s, constant) in constant.iter_mut().enumerate() {
                    let row = &a[(b * specs + s) * n..][..n];
                    let mut sum = 0f32;
                    for ((o, &a), &[lower, upper, intercept]) in
                        out[s * n..(s + 1) * n].iter_mut().zip(row).zip(&relaxed)
                    {
                        let negative = a.min(0.0);
                        o.write(a.max(0.0) * lower + negative * upper);
                        sum += negative * intercept;
                    }
                    *constant = sum;
                }
            });
        // SAFETY: every sample's chunk was written row by row above.
        unsafe { out.set_len(a.len()) };
        Ok((out, constant))
    })?;
    let device = coefficients.device();
    Ok((
        Tensor::from_vec(out, dims, device)?,
        Tensor::from_vec(constant, (batch, specs), device)?,
    ))
}

/// The reverse of [`crown_relu_step`]: from the gradient of its output coefficients and of the
/// bound's constant (`[B, S]`), the gradient of its input coefficients and of the box
/// `(∂centre, ∂radius)` through the upper slope and intercept of the unstable neurons (the
/// lower slope is a choice, not differentiated).
pub fn crown_relu_step_gradient(
    coefficients: &Tensor,
    (centre, radius): (&Tensor, &Tensor),
    grad: &Tensor,
    grad_constant: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    let what = "CROWN relu step gradient";
    let (batch, specs) = row_layout(coefficients, centre.elem_count() / centre.dim(0)?, what)?;
    let dims = coefficients.dims().to_vec();
    let (d_coefficients, d_centre, d_radius) = with_values(
        &[coefficients, centre, radius, grad, grad_constant],
        what,
        |v| {
            let (a, c, r, g, gm) = (v[0], v[1], v[2], v[3], v[4]);
            if g.len() != a.len() || gm.len() != batch * specs {
                bail!("{what}: gradients of other sizes than the coefficients")
            }
            let n = c.len() / batch.max(1);
            let mut da: Vec<f32> = Vec::with_capacity(a.len());
            let mut dc = vec![0f32; c.len()];
            let mut dr = vec![0f32; c.len()];
            da.spare_capacity_mut()[..a.len()]
                .par_chunks_mut((specs * n).max(1))
                .zip(dc.par_chunks_mut(n.max(1)).zip(dr.par_chunks_mut(n.max(1))))
                .enumerate()
                .for_each(|(b, (da, (dc, dr)))| {
                    let (c, r) = (&c[b * n..(b + 1) * n], &r[b * n..(b + 1) * n]);
                    let relaxed = relaxations(c, r);
                    // Per neuron, the gradients of its upper slope and intercept first.
                    let (d_slope, d_intercept) = (&mut *dc, &mut *dr);
                    for s in 0..specs {
                        let offset = (b * specs + s) * n;
                        let (row, g_row) = (&a[offset..][..n], &g[offset..][..n]);
                        let gm = gm[b * specs + s];
                        let outputs = da[s * n..(s + 1) * n].iter_mut().zip(row).zip(g_row);
                        let sums = d_slope.iter_mut().zip(d_intercept.iter_mut());
                        for (((da, &a), &g), (&[lower, upper, intercept], (ds, di))) in
                            outputs.zip(relaxed.iter().zip(sums))
                        {
                            // A⁻ = min(A, 0) is 0 where A⁺ carries the row, so no branch.
                            let positive = a > 0.0;
                            let negative = a.min(0.0);
                            let slope = upper + masked(lower - upper, positive);
                            da.write(g * slope + masked(gm * intercept, !positive));
                            *ds += g * negative;
                            *di += gm * negative;
                        }
                    }
                    // slope = u/(u − l) and intercept = −u·l/(u − l) on unstable neurons.
                    for ((dc, dr), (&c, &r)) in
                        dc.iter_mut().zip(dr.iter_mut()).zip(c.iter().zip(r))
                    {
                        let (lower, upper) = (c - r, c + r);
                        let (d_slope, d_intercept) = (*dc, *dr);
                        if lower < 0.0 && upper > 0.0 {
                            let width = upper - lower;
                            let square = width * width;
                            let d_upper = (-lower * d_slope + lower * lower * d_intercept) / square;
                            let d_lower = (upper * d_slope - upper * upper * d_intercept) / square;
                            *dc = d_upper + d_lower;
                            *dr = d_upper - d_lower;
                        } else {
                            (*dc, *dr) = (0.0, 0.0);
                        }
                    }
                });
            // SAFETY: every sample's chunk was written row by row above.
            unsafe { da.set_len(a.len()) };
            Ok((da, dc, dr))
        },
    )?;
    let device = coefficients.device();
    Ok((
        Tensor::from_vec(d_coefficients, dims, device)?,
        Tensor::from_vec(d_centre, centre.dims(), device)?,
        Tensor::from_vec(d_radius, centre.dims(), device)?,
    ))
}

/// The minimum over the box `centre ± radius` (`[B, …]`) of each row of `A` `[B, S, …]`:
/// `A·centre − |A|·radius`, `[B, S]`.
pub fn crown_box_minimum(
    coefficients: &Tensor,
    centre: &Tensor,
    radius: &Tensor,
) -> Result<Tensor> {
    let what = "CROWN box minimum";
    let (batch, specs) = row_layout(coefficients, centre.elem_count() / centre.dim(0)?, what)?;
    let out = with_values(&[coefficients, centre, radius], what, |v| {
        let (a, c, r) = (v[0], v[1], v[2]);
        let n = c.len() / batch.max(1);
        Ok((0..batch * specs)
            .into_par_iter()
            .map(|row| {
                let b = row / specs;
                let (c, r) = (&c[b * n..(b + 1) * n], &r[b * n..(b + 1) * n]);
                a[row * n..(row + 1) * n]
                    .iter()
                    .zip(c.iter().zip(r))
                    .map(|(&a, (&c, &r))| a * c - a.abs() * r)
                    .sum::<f32>()
            })
            .collect::<Vec<f32>>())
    })?;
    Tensor::from_vec(out, (batch, specs), coefficients.device())
}

/// The gradient of [`crown_box_minimum`] in its coefficients from that of its value `[B, S]`:
/// `g·(centre − sign(A)·radius)`.
pub fn crown_box_minimum_gradient(
    coefficients: &Tensor,
    centre: &Tensor,
    radius: &Tensor,
    grad: &Tensor,
) -> Result<Tensor> {
    let what = "CROWN box minimum gradient";
    let (batch, specs) = row_layout(coefficients, centre.elem_count() / centre.dim(0)?, what)?;
    let dims = coefficients.dims().to_vec();
    let out = with_values(&[coefficients, centre, radius, grad], what, |v| {
        let (a, c, r, g) = (v[0], v[1], v[2], v[3]);
        let n = c.len() / batch.max(1);
        // SAFETY: each row's chunk is written element by element.
        let out = unsafe {
            par_filled(a.len(), n.max(1), |row, out| {
                let b = row / specs;
                let (c, r) = (&c[b * n..(b + 1) * n], &r[b * n..(b + 1) * n]);
                let g = g[row];
                for ((o, &a), (&c, &r)) in out.iter_mut().zip(&a[row * n..]).zip(c.iter().zip(r)) {
                    o.write(g * (c - r.copysign(a)));
                }
            })
        };
        Ok(out)
    })?;
    Tensor::from_vec(out, dims, coefficients.device())
}

/// Rows `R` and channels of `[R, C, …]` with `channels` entries per channel vector, and the
/// elements per channel plane.
fn channel_layout(x: &Tensor, channels: usize, what: &str) -> Result<(usize, usize)> {
    let dims = x.dims();
    if dims.len() < 2 || dims[1] != channels || channels == 0 {
        bail!("{what}: {channels} channel values for {dims:?}")
    }
    Ok((dims[0], dims[2..].iter().product::<usize>().max(1)))
}

/// `Σ_{c,p} A[r, c, p]·v[c]` for `A` `[R, C, …]` and `v` `[C]`: the constant a bias (or a
/// shift) adds to each row's bound.
pub fn channel_dot(coefficients: &Tensor, v: &[f32]) -> Result<Vec<f32>> {
    let what = "CROWN channel dot";
    let (rows, plane) = channel_layout(coefficients, v.len(), what)?;
    with_values(&[coefficients], what, |values| {
        let row_len = v.len() * plane;
        Ok(values[0]
            .par_chunks(row_len)
            .map(|row| {
                row.chunks(plane)
                    .zip(v)
                    .map(|(plane, &v)| plane.iter().sum::<f32>() * v)
                    .sum::<f32>()
            })
            .collect::<Vec<f32>>())
    })
    .and_then(|sums| {
        if sums.len() != rows {
            bail!("{what}: {} rows for {rows}", sums.len())
        }
        Ok(sums)
    })
}

/// `Σ_{r,p} w[r]·A[r, c, p]` (`[C]`, in f64 while summing) for `A` `[R, C, …]` and weights
/// `w` `[R]`: the gradient of [`channel_dot`] in `v`.
pub fn weighted_channel_sums(coefficients: &Tensor, weights: &Tensor) -> Result<Vec<f32>> {
    let what = "CROWN weighted channel sums";
    let channels = coefficients.dim(1)?;
    let (rows, plane) = channel_layout(coefficients, channels, what)?;
    if weights.elem_count() != rows {
        bail!("{what}: {} weights for {rows} rows", weights.elem_count())
    }
    with_values(&[coefficients, weights], what, |v| {
        let (a, w) = (v[0], v[1]);
        let sums = a
            .par_chunks(channels * plane)
            .zip(w.par_iter())
            .fold(
                || vec![0f64; channels],
                |mut sums, (row, &w)| {
                    for (sum, plane) in sums.iter_mut().zip(row.chunks(plane)) {
                        *sum += f64::from(w * plane.iter().sum::<f32>());
                    }
                    sums
                },
            )
            .reduce(
                || vec![0f64; channels],
                |mut a, b| {
                    for (a, b) in a.iter_mut().zip(b) {
                        *a += b;
                    }
                    a
                },
            );
        Ok(sums.into_iter().map(|s| s as f32).collect())
    })
}

/// `g[r, c, p]·scale[c] + w[r]·shift[c]` (`scale` `None`: 1) for `g` `[R, C, …]`: the input
/// coefficients' gradient of a channel-affine step of CROWN (or a bias's), where `w` `[R]` is
/// the gradient of each row's constant.
pub fn scale_and_add_outer(
    grad: &Tensor,
    scale: Option<&[f32]>,
    weights: &Tensor,
    shift: &[f32],
) -> Result<Tensor> {
    let what = "CROWN scale and add outer";
    let (rows, plane) = channel_layout(grad, shift.len(), what)?;
    if weights.elem_count() != rows || scale.is_some_and(|s| s.len() != shift.len()) {
        bail!(
            "{what}: {} row weights for {rows} rows",
            weights.elem_count()
        )
    }
    let dims = grad.dims().to_vec();
    let out = with_values(&[grad, weights], what, |v| {
        let (g, w) = (v[0], v[1]);
        let row_len = shift.len() * plane;
        // SAFETY: each row's chunk is written channel by channel.
        let out = unsafe {
            par_filled(g.len(), row_len, |row, out| {
                let (g, w) = (&g[row * row_len..][..row_len], w[row]);
                for (c, (out, g)) in out.chunks_mut(plane).zip(g.chunks(plane)).enumerate() {
                    let (scale, add) = (scale.map_or(1.0, |s| s[c]), w * shift[c]);
                    for (o, &g) in out.iter_mut().zip(g) {
                        o.write(g * scale + add);
                    }
                }
            })
        };
        Ok(out)
    })?;
    Tensor::from_vec(out, dims, grad.device())
}
