//! Element-wise kernels of attacks inside per-row boxes: the signed-gradient step, keeping each
//! row's best iterate, and TAPS' gradient connector summed over a sample's rows.
//!
//! Written with tensor ops these are 3 to 14 passes over the iterates, each allocating its
//! output; TAPS' latent iterates are `B·(K − 1)` rows as wide as the extractor's output, where
//! those passes cost more than the classifier's matrix products.

use super::{masked, par_filled, with_equal_lengths, with_values};
use candle_core::{Result, Tensor, bail};
use rayon::prelude::*;

/// Elements per rayon task.
const CHUNK: usize = 1 << 14;

/// `clamp(x − step·sign(g)·(u − l), l, u)` element-wise, `sign(0) = 0`: a descent step of
/// `step` times the box width, kept in the box (the arithmetic of the tensor-op form, in its
/// order, so the results are bit-identical).
pub fn box_signed_step(
    x: &Tensor,
    gradient: &Tensor,
    (lower, upper): (&Tensor, &Tensor),
    step: f32,
) -> Result<Tensor> {
    clamped_signed_step(x, gradient, (lower, upper), |x, sign, l, u| {
        x - sign * (u - l) * step
    })
}

/// `min(max(x + step·sign(g), l), u)` element-wise, `sign(0) = 0`: PGD's ascent step of fixed
/// size, projected into the box (the arithmetic of candle's `x + sign(g)·step` then
/// `maximum(l)` and `minimum(u)`, in its order, so the results are bit-identical).
pub fn signed_step(
    x: &Tensor,
    gradient: &Tensor,
    (lower, upper): (&Tensor, &Tensor),
    step: f32,
) -> Result<Tensor> {
    // candle's `tensor * scalar` is an affine map `v·step + 0`.
    clamped_signed_step(x, gradient, (lower, upper), |x, sign, _, _| {
        x + (sign * step + 0.0)
    })
}

/// `clamp(moved(x, sign(g), l, u), l, u)` element-wise (`sign(0) = 0`, the clamp as candle's
/// `maximum(l)` then `minimum(u)`), in one pass.
fn clamped_signed_step(
    x: &Tensor,
    gradient: &Tensor,
    (lower, upper): (&Tensor, &Tensor),
    moved: impl Fn(f32, f32, f32, f32) -> f32 + Sync + Send,
) -> Result<Tensor> {
    let values = with_equal_lengths(&[x, gradient, lower, upper], "signed step", |v| {
        let (x, g, l, u) = (v[0], v[1], v[2], v[3]);
        // SAFETY: every element of each output chunk is written, from input slices as long.
        Ok(unsafe {
            par_filled(x.len(), CHUNK, |index, out| {
                let range = index * CHUNK..index * CHUNK + out.len();
                let (x, g) = (&x[range.clone()], &g[range.clone()]);
                let (l, u) = (&l[range.clone()], &u[range]);
                // Indexing equal-length slices (not a zip of five iterators) lets the loop
                // vectorise.
                for i in 0..out.len() {
                    // Branch-free: gradient signs are a coin toss for the branch predictor.
                    let sign = masked(1f32.copysign(g[i]), g[i] != 0.0);
                    let value = moved(x[i], sign, l[i], u[i]);
                    // candle's `maximum` and `minimum`.
                    let value = if value < l[i] { l[i] } else { value };
                    out[i].write(if value > u[i] { u[i] } else { value });
                }
            })
        })
    })?;
    Tensor::from_vec(values, x.dims(), x.device())
}

/// Row `i` of `candidate` where `keep[i]`, else row `i` of `best` (rows along the first
/// dimension).
pub fn select_rows(keep: &[bool], candidate: &Tensor, best: &Tensor) -> Result<Tensor> {
    if candidate.dims() != best.dims() || candidate.dims().first() != Some(&keep.len()) {
        bail!(
            "select rows: {} flags for candidates {:?} and best {:?}",
            keep.len(),
            candidate.dims(),
            best.dims()
        )
    }
    let width = candidate.elem_count() / keep.len().max(1);
    let values = with_values(&[candidate, best], "select rows", |v| {
        let (candidate, best) = (v[0], v[1]);
        // SAFETY: every row is copied whole from one of two slices as long as the output.
        Ok(unsafe {
            par_filled(candidate.len(), width, |row, out| {
                let source = if keep[row] { candidate } else { best };
                let start = row * width;
                let end = start + out.len();
                for (out, value) in out.iter_mut().zip(&source[start..end]) {
                    out.write(*value);
                }
            })
        })
    })?;
    Tensor::from_vec(values, candidate.dims(), candidate.device())
}

/// TAPS' gradient connector backward: from the gradient `d_pivot` of pivot points in boxes
/// `[lower, upper]` (`rows` consecutive rows per sample, each sample's box repeated), the
/// gradients `(∂centre, ∂radius)` `[samples, features]` of each sample's box. A pivot passes
/// `max(p − (u − s), 0)/s` of its gradient to its upper face and `max(l + s − p, 0)/s` to its
/// lower face, `s = slack·(u − l)` (nothing where the width is 0).
pub fn link_box_gradient(
    pivot: &Tensor,
    (lower, upper): (&Tensor, &Tensor),
    d_pivot: &Tensor,
    rows: usize,
    slack: f32,
) -> Result<(Tensor, Tensor)> {
    let total = pivot.dim(0)?;
    if rows == 0 || total % rows != 0 {
        bail!("link box gradient: {total} rows are not groups of {rows}")
    }
    let samples = total / rows;
    let features = pivot.elem_count() / total.max(1);
    let (d_centre, d_radius) =
        with_equal_lengths(&[pivot, lower, upper, d_pivot], "link box gradient", |v| {
            let (p, l, u, d) = (v[0], v[1], v[2], v[3]);
            let mut d_centre = vec![0f32; samples * features];
            let mut d_radius = vec![0f32; samples * features];
            d_centre
                .par_chunks_mut(features.max(1))
                .zip(d_radius.par_chunks_mut(features.max(1)))
                .enumerate()
                .for_each(|(sample, (d_centre, d_radius))| {
                    // ∂upper accumulates in `d_centre` and ∂lower in `d_radius` until the end.
                    for row in 0..rows {
                        let start = (sample * rows + row) * features;
                        let end = start + features;
                        let inputs = p[start..end]
                            .iter()
                            .zip(&d[start..end])
                            .zip(l[start..end].iter().zip(&u[start..end]));
                        for ((d_upper, d_lower), ((p, d), (l, u))) in
                            d_centre.iter_mut().zip(d_radius.iter_mut()).zip(inputs)
                        {
                            let s = (u - l) * slack;
                            if s > 0.0 {
                                *d_upper += (p - (u - s)).max(0.0) / s * d;
                                *d_lower += ((l + s) - p).max(0.0) / s * d;
                            }
                        }
                    }
                    for (upper, lower) in d_centre.iter_mut().zip(d_radius.iter_mut()) {
                        (*upper, *lower) = (*upper + *lower, *upper - *lower);
                    }
                });
            Ok((d_centre, d_radius))
        })?;
    let device = pivot.device();
    Ok((
        Tensor::from_vec(d_centre, (samples, features), device)?,
        Tensor::from_vec(d_radius, (samples, features), device)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn tensor(values: &[f32], dims: (usize, usize)) -> Tensor {
        Tensor::from_vec(values.to_vec(), dims, &Device::Cpu).unwrap()
    }

    #[test]
    fn the_signed_step_is_the_tensor_op_form() {
        let x = Tensor::rand(-1f32, 1f32, (5, 40), &Device::Cpu).unwrap();
        let lower = (Tensor::rand(0f32, 0.5f32, (5, 40), &Device::Cpu).unwrap() - 1.0).unwrap();
        let upper = (&lower + Tensor::rand(0f32, 1.5f32, (5, 40), &Device::Cpu).unwrap()).unwrap();
        let mut gradient = Tensor::randn(0f32, 1f32, (5, 40), &Device::Cpu).unwrap();
        // Some exact zeros: sign(0) = 0 leaves the point where it is (then clamps it).
        let zero_mask = Tensor::rand(0f32, 1f32, (5, 40), &Device::Cpu)
            .unwrap()
            .gt(0.8)
            .unwrap();
        gradient = zero_mask
            .where_cond(&gradient.zeros_like().unwrap(), &gradient)
            .unwrap();
        let ours = box_signed_step(&x, &gradient, (&lower, &upper), 0.37).unwrap();
        let width = (&upper - &lower).unwrap();
        let expected = (x - (gradient.sign().unwrap().mul(&width).unwrap() * 0.37f64).unwrap())
            .unwrap()
            .maximum(&lower)
            .unwrap()
            .minimum(&upper)
            .unwrap();
        let difference = (ours - expected).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(difference.to_scalar::<f32>().unwrap(), 0.0);
    }

    #[test]
    fn selected_rows_come_whole_from_the_flagged_side() {
        let candidate = tensor(&[1., 2., 3., 4., 5., 6.], (3, 2));
        let best = tensor(&[-1., -2., -3., -4., -5., -6.], (3, 2));
        let picked = select_rows(&[true, false, true], &candidate, &best).unwrap();
        assert_eq!(
            picked.to_vec2::<f32>().unwrap(),
            vec![vec![1., 2.], vec![-3., -4.], vec![5., 6.]]
        );
        assert!(select_rows(&[true], &candidate, &best).is_err());
    }

    #[test]
    fn the_connector_gradient_is_the_derivative_of_the_link() {
        // Two samples of three rows, four features: the link `p + g·(u − ū) + h·(l − l̄)` has
        // derivative g in u and h in l, summed over a sample's rows; c = (u + l)/2, r = (u − l)/2.
        let (samples, rows, features) = (2, 3, 4);
        let lower_sample = Tensor::rand(-1f32, 0f32, (samples, features), &Device::Cpu).unwrap();
        let mut upper_values = (&lower_sample
            + Tensor::rand(0f32, 2f32, (samples, features), &Device::Cpu).unwrap())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
        upper_values[1] = lower_sample
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()[1];
        let upper_sample = tensor(&upper_values, (samples, features));
        let repeat = Tensor::new(&[0u32, 0, 0, 1, 1, 1], &Device::Cpu).unwrap();
        let lower = lower_sample.index_select(&repeat, 0).unwrap();
        let upper = upper_sample.index_select(&repeat, 0).unwrap();
        let t = Tensor::rand(0f32, 1f32, (samples * rows, features), &Device::Cpu).unwrap();
        let pivot = (&lower + (t * (&upper - &lower).unwrap()).unwrap()).unwrap();
        let d_pivot = Tensor::randn(0f32, 1f32, (samples * rows, features), &Device::Cpu).unwrap();
        let (dc, dr) = link_box_gradient(&pivot, (&lower, &upper), &d_pivot, rows, 0.5).unwrap();
        let (p, l, u, d) = (
            pivot.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            lower.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            upper.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            d_pivot.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        let (dc, dr) = (
            dc.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            dr.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        assert_eq!(dc.len(), samples * features);
        for sample in 0..samples {
            for f in 0..features {
                let (mut du, mut dl) = (0f64, 0f64);
                for row in 0..rows {
                    let i = (sample * rows + row) * features + f;
                    let s = 0.5 * f64::from(u[i] - l[i]);
                    if s > 0.0 {
                        let (p, l, u) = (f64::from(p[i]), f64::from(l[i]), f64::from(u[i]));
                        du += (p - (u - s)).max(0.0) / s * f64::from(d[i]);
                        dl += (l + s - p).max(0.0) / s * f64::from(d[i]);
                    }
                }
                let k = sample * features + f;
                assert!((f64::from(dc[k]) - (du + dl)).abs() < 1e-5, "∂c[{k}]");
                assert!((f64::from(dr[k]) - (du - dl)).abs() < 1e-5, "∂r[{k}]");
                if sample == 0 && f == 1 {
                    assert_eq!((dc[k], dr[k]), (0.0, 0.0), "a box of width 0");
                }
            }
        }
    }
}
