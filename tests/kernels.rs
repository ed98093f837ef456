//! The custom convolution kernels agree with candle's own ops and with finite differences,
//! in value and in both gradients.

use candle_core::{Device, Tensor, Var};
use cthpo::kernels::{conv_transpose2d, conv2d};
use rand::{Rng, SeedableRng, rngs::StdRng};

fn random(rng: &mut StdRng, dims: &[usize]) -> Tensor {
    let n: usize = dims.iter().product();
    let values: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
    Tensor::from_vec(values, dims, &Device::Cpu).unwrap()
}

fn max_difference(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Random convolution geometries, including strides that leave input rows unread.
fn geometries(rng: &mut StdRng) -> Vec<[usize; 8]> {
    (0..24)
        .map(|_| {
            let kernel = rng.random_range(1..=4);
            let padding = rng.random_range(0..=kernel / 2 + 1).min(kernel - 1);
            let size = rng.random_range(kernel.max(3)..=9);
            [
                rng.random_range(1..=3), // batch
                rng.random_range(1..=3), // in channels
                size,
                size + rng.random_range(0..=2), // non-square inputs too
                rng.random_range(1..=4),        // out channels
                kernel,
                rng.random_range(1..=3), // stride
                padding,
            ]
        })
        .collect()
}

#[test]
fn conv2d_matches_candle_in_value_and_gradients() {
    let mut rng = StdRng::seed_from_u64(1);
    let (mut compared, mut skipped) = (0, 0);
    for [batch, ci, h, w, co, k, stride, padding] in geometries(&mut rng) {
        let x = Var::from_tensor(&random(&mut rng, &[batch, ci, h, w])).unwrap();
        let kernel = Var::from_tensor(&random(&mut rng, &[co, ci, k, k])).unwrap();
        let ours = conv2d(&x, &kernel, stride, padding).unwrap();
        let theirs = x.conv2d(&kernel, padding, stride, 1, 1).unwrap();
        assert!(
            max_difference(&ours, &theirs) < 1e-5,
            "forward {batch},{ci},{h},{w},{co},{k},{stride},{padding}"
        );
        let weights = random(&mut rng, ours.dims());
        let ours_grads = (ours * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        // candle's own backward fails on some geometries (non-square inputs whose last rows are
        // unread); those are covered by the finite-difference test instead.
        let Ok(theirs_grads) = (theirs * &weights).unwrap().sum_all().unwrap().backward() else {
            skipped += 1;
            continue;
        };
        compared += 1;
        for var in [&x, &kernel] {
            let a = ours_grads.get(var.as_tensor()).unwrap();
            let b = theirs_grads.get(var.as_tensor()).unwrap();
            assert!(
                max_difference(a, b) < 1e-4,
                "gradient {:?} for {batch},{ci},{h},{w},{co},{k},{stride},{padding}",
                var.dims()
            );
        }
    }
    assert!(
        compared >= 12,
        "only {compared} geometries compared ({skipped} skipped)"
    );
}

/// Asserts the adjoint identity `<conv(x), a> = <x, z>` for `z` the transposed convolution of `a`.
fn assert_adjoint(
    x: &Tensor,
    kernel: &Tensor,
    a: &Tensor,
    z: &Tensor,
    (stride, padding): (usize, usize),
) {
    let inner = |p: &Tensor, q: &Tensor| {
        (p * q)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    let left = inner(&conv2d(x, kernel, stride, padding).unwrap(), a);
    let right = inner(x, z);
    assert!(
        (left - right).abs() <= 1e-4 * (1.0 + left.abs()),
        "{left} vs {right}"
    );
}

#[test]
fn conv_transpose2d_is_the_adjoint_and_matches_candle() {
    let mut rng = StdRng::seed_from_u64(2);
    for [batch, ci, h, w, co, k, stride, padding] in geometries(&mut rng) {
        let ho = (h + 2 * padding - k) / stride + 1;
        let wo = (w + 2 * padding - k) / stride + 1;
        let x = random(&mut rng, &[batch, ci, h, w]);
        let a = Var::from_tensor(&random(&mut rng, &[batch, co, ho, wo])).unwrap();
        let kernel = Var::from_tensor(&random(&mut rng, &[co, ci, k, k])).unwrap();
        let z = conv_transpose2d(&a, &kernel, stride, padding, h, w).unwrap();
        assert_adjoint(&x, &kernel, a.as_tensor(), &z, (stride, padding));
        // candle's transposed convolution, when its output padding can express the size.
        let missing_h = h - ((ho - 1) * stride + k - 2 * padding);
        let missing_w = w - ((wo - 1) * stride + k - 2 * padding);
        if missing_h == missing_w && missing_h < stride.max(1) {
            let theirs = a
                .conv_transpose2d(&kernel, padding, missing_h, stride, 1)
                .unwrap();
            assert!(max_difference(&z, &theirs) < 1e-4);
            let weights = random(&mut rng, z.dims());
            let ours_grads = (&z * &weights)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let theirs_grads = (theirs * &weights)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            for var in [&a, &kernel] {
                let g1 = ours_grads.get(var.as_tensor()).unwrap();
                let g2 = theirs_grads.get(var.as_tensor()).unwrap();
                assert!(max_difference(g1, g2) < 1e-4);
            }
        }
    }
}

#[test]
fn gradients_agree_with_finite_differences() {
    // The loss is bilinear in (input, kernel), so central differences are exact up to rounding.
    let mut rng = StdRng::seed_from_u64(3);
    for [batch, ci, h, w, co, k, stride, padding] in geometries(&mut rng) {
        let x = random(&mut rng, &[batch, ci, h, w]);
        let kernel = random(&mut rng, &[co, ci, k, k]);
        let y_dims = conv2d(&x, &kernel, stride, padding)
            .unwrap()
            .dims()
            .to_vec();
        let weights = random(&mut rng, &y_dims);
        let loss = |x: &Tensor, kernel: &Tensor| {
            let y = conv2d(x, kernel, stride, padding).unwrap();
            (y * &weights)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        let x_var = Var::from_tensor(&x).unwrap();
        let k_var = Var::from_tensor(&kernel).unwrap();
        let y = conv2d(&x_var, &k_var, stride, padding).unwrap();
        let grads = (y * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for (var, base, is_input) in [(&x_var, &x, true), (&k_var, &kernel, false)] {
            let analytic = grads.get(var.as_tensor()).unwrap().flatten_all().unwrap();
            let analytic = analytic.to_vec1::<f32>().unwrap();
            let flat = base.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for index in (0..flat.len()).step_by(3) {
                let shifted = |delta: f32| {
                    let mut values = flat.clone();
                    values[index] += delta;
                    let t = Tensor::from_vec(values, base.dims(), &Device::Cpu).unwrap();
                    if is_input {
                        loss(&t, &kernel)
                    } else {
                        loss(&x, &t)
                    }
                };
                let numeric = (shifted(0.05) - shifted(-0.05)) / 0.1;
                assert!(
                    (numeric - analytic[index]).abs() < 2e-3 * (1.0 + numeric.abs()),
                    "index {index}: {numeric} vs {}",
                    analytic[index]
                );
            }
        }
    }
}

#[test]
fn channel_affine_matches_broadcast_ops_in_value_and_gradients() {
    use cthpo::kernels::channel_affine;
    let mut rng = StdRng::seed_from_u64(4);
    for dims in [vec![3, 4], vec![2, 3, 5, 4], vec![1, 2, 1, 1]] {
        let channels = dims[1];
        let x = Var::from_tensor(&random(&mut rng, &dims)).unwrap();
        let scale = Var::from_tensor(&random(&mut rng, &[channels])).unwrap();
        let shift = Var::from_tensor(&random(&mut rng, &[channels])).unwrap();
        let mut view = vec![1; dims.len()];
        view[1] = channels;
        let ours = channel_affine(&x, &scale, &shift).unwrap();
        let theirs = x
            .broadcast_mul(&scale.reshape(view.clone()).unwrap())
            .unwrap()
            .broadcast_add(&shift.reshape(view).unwrap())
            .unwrap();
        assert!(max_difference(&ours, &theirs) < 1e-6);
        let weights = random(&mut rng, &dims);
        let g1 = (ours * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g2 = (theirs * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for var in [&x, &scale, &shift] {
            let a = g1.get(var.as_tensor()).unwrap();
            let b = g2.get(var.as_tensor()).unwrap();
            assert!(max_difference(a, b) < 1e-5, "gradient of {:?}", var.dims());
        }
    }
}

#[test]
fn spec_mul_matches_broadcast_mul_in_value_and_gradients() {
    use cthpo::kernels::spec_mul;
    let mut rng = StdRng::seed_from_u64(5);
    for (a_dims, v_dims) in [
        (vec![3, 4, 5], vec![3, 5]),
        (vec![2, 3, 2, 4, 4], vec![2, 2, 4, 4]),
    ] {
        let a = Var::from_tensor(&random(&mut rng, &a_dims)).unwrap();
        let v = Var::from_tensor(&random(&mut rng, &v_dims)).unwrap();
        let ours = spec_mul(&a, &v).unwrap();
        let theirs = a.broadcast_mul(&v.unsqueeze(1).unwrap()).unwrap();
        assert!(max_difference(&ours, &theirs) < 1e-6);
        let weights = random(&mut rng, &a_dims);
        let g1 = (ours * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g2 = (theirs * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for var in [&a, &v] {
            let x = g1.get(var.as_tensor()).unwrap();
            let y = g2.get(var.as_tensor()).unwrap();
            assert!(max_difference(x, y) < 1e-5, "gradient of {:?}", var.dims());
        }
    }
}

/// Central-difference check of the gradient of `loss` at `base` against `analytic`, on every
/// `step`-th coordinate.
fn check_finite_differences(
    base: &Tensor,
    analytic: &Tensor,
    step: usize,
    loss: impl Fn(&Tensor) -> f32,
) {
    let analytic = analytic.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let flat = base.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for index in (0..flat.len()).step_by(step) {
        let shifted = |delta: f32| {
            let mut values = flat.clone();
            values[index] += delta;
            loss(&Tensor::from_vec(values, base.dims(), &Device::Cpu).unwrap())
        };
        let numeric = (shifted(1e-2) - shifted(-1e-2)) / 2e-2;
        assert!(
            (numeric - analytic[index]).abs() < 5e-3 * (1.0 + numeric.abs()),
            "index {index}: {numeric} vs {}",
            analytic[index]
        );
    }
}

fn weighted_sum(t: &Tensor, weights: &Tensor) -> Tensor {
    (t * weights).unwrap().sum_all().unwrap()
}

#[test]
fn conv2d_bias_matches_conv_plus_broadcast_bias_and_finite_differences() {
    use cthpo::kernels::conv2d_bias;
    let mut rng = StdRng::seed_from_u64(6);
    for [batch, ci, h, w, co, k, stride, padding] in geometries(&mut rng) {
        let x = Var::from_tensor(&random(&mut rng, &[batch, ci, h, w])).unwrap();
        let kernel = Var::from_tensor(&random(&mut rng, &[co, ci, k, k])).unwrap();
        let bias = Var::from_tensor(&random(&mut rng, &[co])).unwrap();
        let ours = conv2d_bias(&x, &kernel, &bias, stride, padding).unwrap();
        let theirs = conv2d(&x, &kernel, stride, padding)
            .unwrap()
            .broadcast_add(&bias.reshape((1, co, 1, 1)).unwrap())
            .unwrap();
        assert!(max_difference(&ours, &theirs) < 1e-5);
        let weights = random(&mut rng, ours.dims());
        let g1 = weighted_sum(&ours, &weights).backward().unwrap();
        let g2 = weighted_sum(&theirs, &weights).backward().unwrap();
        for var in [&x, &kernel, &bias] {
            let a = g1.get(var.as_tensor()).unwrap();
            let b = g2.get(var.as_tensor()).unwrap();
            assert!(max_difference(a, b) < 1e-4, "gradient of {:?}", var.dims());
        }
        let loss = |b: &Tensor| {
            let y = conv2d_bias(x.as_tensor(), kernel.as_tensor(), b, stride, padding).unwrap();
            weighted_sum(&y, &weights).to_scalar::<f32>().unwrap()
        };
        check_finite_differences(bias.as_tensor(), g1.get(bias.as_tensor()).unwrap(), 1, loss);
    }
}

#[test]
fn relu_matches_candle_in_value_and_gradient() {
    use cthpo::kernels::relu;
    let mut rng = StdRng::seed_from_u64(7);
    for dims in [vec![3, 5], vec![2, 3, 4, 5], vec![70_000]] {
        let mut x = random(&mut rng, &dims);
        // Exact zeros take the subgradient candle uses (1), as they do in real activations.
        x = x
            .broadcast_mul(
                &x.abs()
                    .unwrap()
                    .ge(0.1)
                    .unwrap()
                    .to_dtype(x.dtype())
                    .unwrap(),
            )
            .unwrap();
        let x = Var::from_tensor(&x).unwrap();
        let ours = relu(&x).unwrap();
        let theirs = x.relu().unwrap();
        assert_eq!(max_difference(&ours, &theirs), 0.0);
        let weights = random(&mut rng, &dims);
        let g1 = weighted_sum(&ours, &weights).backward().unwrap();
        let g2 = weighted_sum(&theirs, &weights).backward().unwrap();
        let (a, b) = (
            g1.get(x.as_tensor()).unwrap(),
            g2.get(x.as_tensor()).unwrap(),
        );
        assert_eq!(max_difference(a, b), 0.0);
    }
}

#[test]
fn relu_gradient_agrees_with_finite_differences_away_from_zero() {
    use cthpo::kernels::relu;
    let mut rng = StdRng::seed_from_u64(8);
    // Entries at least 0.5 from the kink, so a ±0.01 step never crosses it.
    let values: Vec<f32> = (0..2 * 3 * 4 * 4)
        .map(|i| {
            let v: f32 = rng.random_range(0.5..1.0);
            if i % 2 == 0 { v } else { -v }
        })
        .collect();
    let x = Tensor::from_vec(values, (2, 3, 4, 4), &Device::Cpu).unwrap();
    let weights = random(&mut rng, x.dims());
    let var = Var::from_tensor(&x).unwrap();
    let grads = weighted_sum(&relu(&var).unwrap(), &weights)
        .backward()
        .unwrap();
    let loss = |t: &Tensor| {
        weighted_sum(&relu(t).unwrap(), &weights)
            .to_scalar::<f32>()
            .unwrap()
    };
    check_finite_differences(&x, grads.get(var.as_tensor()).unwrap(), 1, loss);
}

/// candle's own per-channel mean and biased variance, for comparison.
fn candle_moments(x: &Tensor) -> (Tensor, Tensor) {
    let per_channel = if x.rank() == 4 {
        x.transpose(0, 1).unwrap().flatten_from(1).unwrap()
    } else {
        x.t().unwrap()
    };
    let mean = per_channel.mean_keepdim(1).unwrap();
    let variance = per_channel
        .broadcast_sub(&mean)
        .unwrap()
        .sqr()
        .unwrap()
        .mean_keepdim(1)
        .unwrap();
    (mean.flatten_all().unwrap(), variance.flatten_all().unwrap())
}

#[test]
fn channel_moments_match_candle_and_finite_differences() {
    use cthpo::kernels::channel_moments;
    let mut rng = StdRng::seed_from_u64(9);
    for dims in [vec![5, 3], vec![3, 4, 5, 2], vec![1, 2, 1, 1]] {
        let channels = dims[1];
        let x = Var::from_tensor(&random(&mut rng, &dims)).unwrap();
        let moments = channel_moments(&x).unwrap();
        assert_eq!(moments.dims(), &[2, channels]);
        let (mean, variance) = candle_moments(&x);
        let (our_mean, our_variance) = (moments.get(0).unwrap(), moments.get(1).unwrap());
        assert!(max_difference(&our_mean, &mean) < 1e-6);
        assert!(max_difference(&our_variance, &variance) < 1e-6);
        let (w_mean, w_var) = (random(&mut rng, &[channels]), random(&mut rng, &[channels]));
        let loss_of =
            |m: &Tensor, v: &Tensor| (weighted_sum(m, &w_mean) + weighted_sum(v, &w_var)).unwrap();
        let g1 = loss_of(&our_mean, &our_variance).backward().unwrap();
        let g2 = loss_of(&mean, &variance).backward().unwrap();
        let ours = g1.get(x.as_tensor()).unwrap();
        assert!(max_difference(ours, g2.get(x.as_tensor()).unwrap()) < 1e-5);
        let loss = |t: &Tensor| {
            let m = channel_moments(t).unwrap();
            loss_of(&m.get(0).unwrap(), &m.get(1).unwrap())
                .to_scalar::<f32>()
                .unwrap()
        };
        check_finite_differences(x.as_tensor(), ours, 1, loss);
    }
}

#[test]
fn channel_affine_relu_matches_affine_then_relu_and_finite_differences() {
    use cthpo::kernels::{channel_affine, channel_affine_relu};
    let mut rng = StdRng::seed_from_u64(10);
    for dims in [vec![4, 3], vec![2, 3, 4, 5], vec![1, 2, 1, 1]] {
        let channels = dims[1];
        let plane: usize = dims[2..].iter().product();
        let scales: Vec<f32> = (0..channels)
            .map(|_| rng.random_range(0.5..1.5) * if rng.random_bool(0.5) { 1.0 } else { -1.0 })
            .collect();
        let shifts: Vec<f32> = (0..channels).map(|_| rng.random_range(-1.0..1.0)).collect();
        // Inputs whose pre-activations are at least 0.5 from the kink, so finite differences
        // never cross it.
        let n: usize = dims.iter().product();
        let xs: Vec<f32> = (0..n)
            .map(|i| {
                let c = (i / plane.max(1)) % channels;
                let target =
                    rng.random_range(0.5..1.0) * if rng.random_bool(0.5) { 1.0 } else { -1.0 };
                (target - shifts[c]) / scales[c]
            })
            .collect();
        let x = Var::from_tensor(&Tensor::from_vec(xs, dims.as_slice(), &Device::Cpu).unwrap())
            .unwrap();
        let scale =
            Var::from_tensor(&Tensor::new(scales.as_slice(), &Device::Cpu).unwrap()).unwrap();
        let shift =
            Var::from_tensor(&Tensor::new(shifts.as_slice(), &Device::Cpu).unwrap()).unwrap();
        let ours = channel_affine_relu(&x, &scale, &shift).unwrap();
        let mut view = vec![1; dims.len()];
        view[1] = channels;
        let theirs = x
            .broadcast_mul(&scale.reshape(view.clone()).unwrap())
            .unwrap()
            .broadcast_add(&shift.reshape(view).unwrap())
            .unwrap()
            .relu()
            .unwrap();
        assert!(max_difference(&ours, &theirs) < 1e-6);
        let unfused = cthpo::kernels::relu(&channel_affine(&x, &scale, &shift).unwrap()).unwrap();
        assert!(max_difference(&ours, &unfused) < 1e-6);
        let weights = random(&mut rng, &dims);
        let g1 = weighted_sum(&ours, &weights).backward().unwrap();
        let g2 = weighted_sum(&theirs, &weights).backward().unwrap();
        for var in [&x, &scale, &shift] {
            let a = g1.get(var.as_tensor()).unwrap();
            let b = g2.get(var.as_tensor()).unwrap();
            assert!(max_difference(a, b) < 1e-5, "gradient of {:?}", var.dims());
        }
        let loss = |x: &Tensor, s: &Tensor, b: &Tensor| {
            weighted_sum(&channel_affine_relu(x, s, b).unwrap(), &weights)
                .to_scalar::<f32>()
                .unwrap()
        };
        let (xt, st, bt) = (x.as_tensor(), scale.as_tensor(), shift.as_tensor());
        check_finite_differences(xt, g1.get(xt).unwrap(), 1, |t| loss(t, st, bt));
        check_finite_differences(st, g1.get(st).unwrap(), 1, |t| loss(xt, t, bt));
        check_finite_differences(bt, g1.get(bt).unwrap(), 1, |t| loss(xt, st, t));
    }
}

/// `(relu(c + r) ± relu(c − r)) / 2` written with candle's ops, the composition the fused
/// box-ReLU ops replace.
fn candle_relu_box(centre: &Tensor, radius: &Tensor) -> (Tensor, Tensor) {
    let upper = (centre + radius).unwrap().relu().unwrap();
    let lower = (centre - radius).unwrap().relu().unwrap();
    (
        ((&upper + &lower).unwrap() * 0.5).unwrap(),
        ((&upper - &lower).unwrap() * 0.5).unwrap(),
    )
}

#[test]
fn relu_box_ops_match_the_candle_composition_bit_for_bit() {
    use cthpo::kernels::{relu_box_centre, relu_box_radius};
    let mut rng = StdRng::seed_from_u64(21);
    for dims in [vec![3, 7], vec![2, 3, 4, 5], vec![50_000]] {
        let centre = Var::from_tensor(&random(&mut rng, &dims)).unwrap();
        // Radii ≥ 0, as in boxes, with some boxes straddling zero and some not.
        let radius =
            Var::from_tensor(&(random(&mut rng, &dims).abs().unwrap() * 0.5).unwrap()).unwrap();
        let (c, r) = (centre.as_tensor(), radius.as_tensor());
        let ours = (
            relu_box_centre(c, r).unwrap(),
            relu_box_radius(c, r).unwrap(),
        );
        let theirs = candle_relu_box(c, r);
        assert_eq!(max_difference(&ours.0, &theirs.0), 0.0);
        assert_eq!(max_difference(&ours.1, &theirs.1), 0.0);
        let (wc, wr) = (random(&mut rng, &dims), random(&mut rng, &dims));
        let loss = |pair: &(Tensor, Tensor)| {
            (weighted_sum(&pair.0, &wc) + weighted_sum(&pair.1, &wr)).unwrap()
        };
        let g_ours = loss(&ours).backward().unwrap();
        let g_theirs = loss(&theirs).backward().unwrap();
        for var in [&centre, &radius] {
            let (a, b) = (
                g_ours.get(var.as_tensor()).unwrap(),
                g_theirs.get(var.as_tensor()).unwrap(),
            );
            assert!(max_difference(a, b) < 1e-6, "{dims:?}: gradients differ");
        }
    }
}

#[test]
fn relu_box_gradients_agree_with_finite_differences_away_from_the_kinks() {
    use cthpo::kernels::{relu_box_centre, relu_box_radius};
    let mut rng = StdRng::seed_from_u64(22);
    // Centres ±(1..2) and radii in 0.1..0.5 (stable boxes) or 2..3 (straddling boxes): c ± r
    // is then at least 0.5 from zero, so a ±0.01 step never crosses a kink.
    let n = 2 * 3 * 4 * 4;
    let centres: Vec<f32> = (0..n)
        .map(|i| {
            let v: f32 = rng.random_range(1.0..2.0);
            if i % 2 == 0 { v } else { -v }
        })
        .collect();
    let radii: Vec<f32> = (0..n)
        .map(|i| {
            if i % 3 == 0 {
                rng.random_range(3.0..4.0)
            } else {
                rng.random_range(0.1..0.5)
            }
        })
        .collect();
    let dims = (2, 3, 4, 4);
    let c = Tensor::from_vec(centres, dims, &Device::Cpu).unwrap();
    let r = Tensor::from_vec(radii, dims, &Device::Cpu).unwrap();
    let (wc, wr) = (random(&mut rng, c.dims()), random(&mut rng, c.dims()));
    let total = |c: &Tensor, r: &Tensor| {
        (weighted_sum(&relu_box_centre(c, r).unwrap(), &wc)
            + weighted_sum(&relu_box_radius(c, r).unwrap(), &wr))
        .unwrap()
    };
    let (cv, rv) = (Var::from_tensor(&c).unwrap(), Var::from_tensor(&r).unwrap());
    let grads = total(cv.as_tensor(), rv.as_tensor()).backward().unwrap();
    check_finite_differences(&c, grads.get(cv.as_tensor()).unwrap(), 1, |t| {
        total(t, &r).to_scalar::<f32>().unwrap()
    });
    check_finite_differences(&r, grads.get(rv.as_tensor()).unwrap(), 1, |t| {
        total(&c, t).to_scalar::<f32>().unwrap()
    });
}

#[test]
fn linear_ops_match_candle_in_value_and_all_gradients() {
    use cthpo::kernels::{abs_linear, linear};
    let mut rng = StdRng::seed_from_u64(31);
    for (input_dims, outputs) in [(vec![5, 7], 3), (vec![4, 2, 3, 3], 6), (vec![64, 300], 40)] {
        let inputs: usize = input_dims[1..].iter().product();
        let x = Var::from_tensor(&random(&mut rng, &input_dims)).unwrap();
        // Some exact zeros in W, where |W|'s subgradient convention matters.
        let w = random(&mut rng, &[outputs, inputs]);
        let w = (&w
            * w.abs()
                .unwrap()
                .ge(0.1)
                .unwrap()
                .to_dtype(w.dtype())
                .unwrap())
        .unwrap();
        let w = Var::from_tensor(&w).unwrap();
        let b = Var::from_tensor(&random(&mut rng, &[outputs])).unwrap();
        let (xt, wt, bt) = (x.as_tensor(), w.as_tensor(), b.as_tensor());
        let flat = xt.flatten_from(1).unwrap();
        let ours = (linear(xt, wt, bt).unwrap(), abs_linear(xt, wt).unwrap());
        let theirs = (
            flat.matmul(&wt.t().unwrap())
                .unwrap()
                .broadcast_add(bt)
                .unwrap(),
            flat.matmul(&wt.abs().unwrap().t().unwrap()).unwrap(),
        );
        assert!(max_difference(&ours.0, &theirs.0) < 1e-4);
        assert!(max_difference(&ours.1, &theirs.1) < 1e-4);
        let (w0, w1) = (
            random(&mut rng, &[input_dims[0], outputs]),
            random(&mut rng, &[input_dims[0], outputs]),
        );
        let loss = |pair: &(Tensor, Tensor)| {
            (weighted_sum(&pair.0, &w0) + weighted_sum(&pair.1, &w1)).unwrap()
        };
        let g_ours = loss(&ours).backward().unwrap();
        let g_theirs = loss(&theirs).backward().unwrap();
        for (name, var) in [("x", &x), ("W", &w), ("b", &b)] {
            let (a, e) = (
                g_ours.get(var.as_tensor()).unwrap(),
                g_theirs.get(var.as_tensor()).unwrap(),
            );
            assert!(
                max_difference(a, e) < 1e-4,
                "{input_dims:?}: gradient of {name} differs by {}",
                max_difference(a, e)
            );
        }
    }
}

#[test]
fn linear_gradients_agree_with_finite_differences() {
    use cthpo::kernels::{abs_linear, linear};
    let mut rng = StdRng::seed_from_u64(32);
    let x = random(&mut rng, &[3, 2, 2, 2]);
    // Weights at least 0.2 from zero, so |W| is smooth under a ±0.01 step.
    let w = random(&mut rng, &[4, 8]);
    let w = (w.sign().unwrap() * w.abs().unwrap().affine(0.8, 0.2).unwrap()).unwrap();
    let b = random(&mut rng, &[4]);
    let weights = random(&mut rng, &[3, 4]);
    let total = |x: &Tensor, w: &Tensor, b: &Tensor| {
        (weighted_sum(&linear(x, w, b).unwrap(), &weights)
            + weighted_sum(&abs_linear(x, w).unwrap(), &weights.sqr().unwrap()))
        .unwrap()
    };
    let (xv, wv, bv) = (
        Var::from_tensor(&x).unwrap(),
        Var::from_tensor(&w).unwrap(),
        Var::from_tensor(&b).unwrap(),
    );
    let grads = total(xv.as_tensor(), wv.as_tensor(), bv.as_tensor())
        .backward()
        .unwrap();
    let value = |t: Tensor| t.to_scalar::<f32>().unwrap();
    check_finite_differences(&x, grads.get(xv.as_tensor()).unwrap(), 1, |t| {
        value(total(t, &w, &b))
    });
    check_finite_differences(&w, grads.get(wv.as_tensor()).unwrap(), 1, |t| {
        value(total(&x, t, &b))
    });
    check_finite_differences(&b, grads.get(bv.as_tensor()).unwrap(), 1, |t| {
        value(total(&x, &w, t))
    });
}

/// `ours` within float tolerance of `reference`, relative to its largest entry (at least 1).
fn assert_near(ours: &Tensor, reference: &Tensor, what: &str) {
    let scale = reference
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let difference = max_difference(ours, reference);
    assert!(
        difference <= 1e-5 * scale.max(1.0),
        "{what}: off by {difference}"
    );
}

#[test]
fn winograd_convolutions_match_im2col_in_value_and_both_gradients() {
    use cthpo::kernels::{
        conv2d_bias, conv2d_weight_gradient, winograd_conv2d, winograd_conv2d_input_gradient,
        winograd_conv2d_keeping_input, winograd_conv2d_weight_gradient,
        winograd_conv2d_weight_gradient_from, winograd_supports,
    };
    let mut rng = StdRng::seed_from_u64(41);
    // Batches that fill several groups and leave a partial last one; non-square images.
    for &(batch, cin, cout, height, width) in
        &[(3, 16, 20, 6, 8), (9, 24, 16, 14, 14), (2, 16, 16, 2, 4)]
    {
        let x = random(&mut rng, &[batch, cin, height, width]);
        let kernel = random(&mut rng, &[cout, cin, 3, 3]);
        let bias = random(&mut rng, &[cout]);
        assert!(winograd_supports(x.dims(), kernel.dims(), 1, 1));
        let reference = conv2d_bias(&x, &kernel, &bias, 1, 1).unwrap();
        let ours = winograd_conv2d(&x, &kernel, Some(&bias)).unwrap();
        assert_near(&ours, &reference, "forward");

        let grad = random(&mut rng, &[batch, cout, height, width]);
        let dx = conv_transpose2d(&grad, &kernel, 1, 1, height, width).unwrap();
        let ours = winograd_conv2d_input_gradient(&grad, &kernel).unwrap();
        assert_near(&ours, &dx, "input gradient");

        let dw = conv2d_weight_gradient(&x, &grad, 3, 1, 1).unwrap();
        let ours = winograd_conv2d_weight_gradient(&x, &grad).unwrap();
        assert_near(&ours, &dw, "kernel gradient");

        // The transformed input kept by the forward pass gives the same results.
        let (output, kept) = winograd_conv2d_keeping_input(&x, &kernel, Some(&bias)).unwrap();
        let direct = winograd_conv2d(&x, &kernel, Some(&bias)).unwrap();
        assert_eq!(max_difference(&output, &direct), 0.0);
        let from_kept = winograd_conv2d_weight_gradient_from(&kept, &grad).unwrap();
        assert_eq!(max_difference(&from_kept, &ours), 0.0);
        let wrong = random(&mut rng, &[batch + 1, cout, height, width]);
        assert!(winograd_conv2d_weight_gradient_from(&kept, &wrong).is_err());
    }
    // Shapes outside F(2×2, 3×3) at stride 1 are refused rather than computed wrongly.
    assert!(!winograd_supports(&[1, 16, 7, 8], &[4, 16, 3, 3], 1, 1));
    assert!(!winograd_supports(&[1, 16, 8, 8], &[4, 16, 3, 3], 2, 1));
    assert!(!winograd_supports(&[1, 16, 8, 8], &[4, 16, 4, 4], 1, 1));
    assert!(!winograd_supports(&[1, 4, 8, 8], &[4, 4, 3, 3], 1, 1));
    let odd = random(&mut rng, &[1, 16, 7, 8]);
    assert!(winograd_conv2d(&odd, &random(&mut rng, &[4, 16, 3, 3]), None).is_err());
}

#[test]
fn convolutions_from_precomputed_columns_match_the_direct_kernels() {
    use cthpo::kernels::{
        conv2d_bias, conv2d_columns, conv2d_from_columns, conv2d_weight_gradient,
        conv2d_weight_gradient_from_columns,
    };
    let mut rng = StdRng::seed_from_u64(43);
    for [batch, cin, height, width, cout, kernel, stride, padding] in geometries(&mut rng) {
        let x = random(&mut rng, &[batch, cin, height, width]);
        let weight = random(&mut rng, &[cout, cin, kernel, kernel]);
        let bias = random(&mut rng, &[cout]);
        let direct = conv2d_bias(&x, &weight, &bias, stride, padding).unwrap();
        let (_, _, out_height, out_width) = direct.dims4().unwrap();
        let columns = conv2d_columns(&x, kernel, stride, padding).unwrap();
        let ours = conv2d_from_columns(&columns, &weight, Some(&bias), (out_height, out_width));
        assert_eq!(
            max_difference(&ours.unwrap(), &direct),
            0.0,
            "same products, same order"
        );
        let grad = random(&mut rng, direct.dims());
        let expected = conv2d_weight_gradient(&x, &grad, kernel, stride, padding).unwrap();
        let ours = conv2d_weight_gradient_from_columns(&columns, &grad, kernel).unwrap();
        assert_eq!(max_difference(&ours, &expected), 0.0);
    }
    let columns = Tensor::zeros((2, 9, 16), candle_core::DType::F32, &Device::Cpu).unwrap();
    let weight = Tensor::zeros((3, 1, 3, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
    assert!(
        conv2d_from_columns(&columns, &weight, None, (5, 5)).is_err(),
        "16 ≠ 5·5 positions"
    );
}

#[test]
fn grouped_convolutions_of_small_layers_match_candle_over_many_samples() {
    use cthpo::kernels::{conv2d_bias, conv2d_columns, conv2d_from_columns};
    let mut rng = StdRng::seed_from_u64(47);
    // cnn-small's first layer (16 kernels of 4×4, stride 2) and a stride-1 one: small enough
    // that groups of samples share one product, with a partial last group.
    for &(batch, cin, size, cout, kernel, stride, padding) in
        &[(45, 1, 28, 16, 4, 2, 1), (23, 2, 9, 5, 3, 1, 1)]
    {
        let x = random(&mut rng, &[batch, cin, size, size]);
        let weight = random(&mut rng, &[cout, cin, kernel, kernel]);
        let bias = random(&mut rng, &[cout]);
        let ours = conv2d_bias(&x, &weight, &bias, stride, padding).unwrap();
        let theirs = x
            .conv2d(&weight, padding, stride, 1, 1)
            .unwrap()
            .broadcast_add(&bias.reshape((1, cout, 1, 1)).unwrap())
            .unwrap();
        assert_near(&ours, &theirs, "forward");
        let (_, _, out_height, out_width) = ours.dims4().unwrap();
        let columns = conv2d_columns(&x, kernel, stride, padding).unwrap();
        let from_columns =
            conv2d_from_columns(&columns, &weight, Some(&bias), (out_height, out_width)).unwrap();
        assert_eq!(max_difference(&from_columns, &ours), 0.0, "same products");
        // The transposed convolution is the adjoint of the forward one.
        let a = random(&mut rng, ours.dims());
        let z = conv_transpose2d(&a, &weight, stride, padding, size, size).unwrap();
        assert_adjoint(&x, &weight, &a, &z, (stride, padding));
    }
}

#[test]
fn relu_masked_transposed_convolution_is_the_transposed_convolution_of_the_masked_gradient() {
    use cthpo::kernels::{relu_gradient, relu_masked_conv_transpose2d, signed_step};
    let mut rng = StdRng::seed_from_u64(53);
    for &(batch, cin, size, cout, kernel, stride, padding) in &[
        (45, 1, 28, 16, 4, 2, 1),
        (1, 1, 28, 16, 4, 2, 1),
        (7, 3, 8, 4, 3, 1, 1),
        (5, 2, 9, 3, 3, 2, 0),
    ] {
        let out = (size + 2 * padding - kernel) / stride + 1;
        let dims = [batch, cout, out, out];
        let g = random(&mut rng, &dims);
        // A third of the ReLU inputs exactly 0, where the gradient passes (as in
        // `relu_gradient`).
        let values: Vec<f32> = (0..dims.iter().product::<usize>())
            .map(|_| match rng.random_range(0..3) {
                0 => 0.0,
                _ => rng.random_range(-1.0..1.0),
            })
            .collect();
        let pre_activation = Tensor::from_vec(values, &dims[..], &Device::Cpu).unwrap();
        let weight = random(&mut rng, &[cout, cin, kernel, kernel]);
        let masked = relu_gradient(&pre_activation, &g).unwrap();
        let expected = conv_transpose2d(&masked, &weight, stride, padding, size, size).unwrap();
        let ours = relu_masked_conv_transpose2d(
            &g,
            &pre_activation,
            &weight,
            (stride, padding),
            (size, size),
        )
        .unwrap();
        assert_eq!(
            max_difference(&ours, &expected),
            0.0,
            "same coefficients, same products"
        );
        let wrong = random(&mut rng, &[batch, cout, out, out + 1]);
        assert!(
            relu_masked_conv_transpose2d(&g, &wrong, &weight, (stride, padding), (size, size))
                .is_err()
        );
    }
    // PGD's fused step against candle's `x + sign(g)·step`, `maximum(l)`, `minimum(u)`, bit for
    // bit, with zero gradients and points outside the box.
    let dims = [37, 3, 5, 7];
    let x = random(&mut rng, &dims);
    let g = (random(&mut rng, &dims)
        .ge(0.3)
        .unwrap()
        .to_dtype(candle_core::DType::F32))
    .unwrap()
    .mul(&random(&mut rng, &dims))
    .unwrap();
    let lower = (random(&mut rng, &dims).abs().unwrap() * -0.5).unwrap();
    let upper = (random(&mut rng, &dims).abs().unwrap() * 0.5).unwrap();
    let ours = signed_step(&x, &g, (&lower, &upper), 0.125).unwrap();
    let theirs = (&x + (g.sign().unwrap() * 0.125).unwrap())
        .unwrap()
        .maximum(&lower)
        .unwrap()
        .minimum(&upper)
        .unwrap();
    assert_eq!(
        ours.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        theirs.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    );
}
