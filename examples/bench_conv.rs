//! Per-layer convolution timings: forward, input gradient, kernel gradient.
//!
//! `cargo run --release --example bench_conv -- --batch 256 --threads 2 [--reps 5]` times cthpo's
//! convolution kernels on the layer shapes of `cnn7` (MNIST) and prints one JSON line per layer
//! and kernel, median over `--reps` calls: im2col + gemm (what bound passes use) and, where it
//! applies, Winograd (what training uses). The last line sums what training runs.
//! `benches/pytorch_conv_reference.py` times PyTorch's.

use candle_core::{Device, Tensor};
use cthpo::kernels::{
    conv_transpose2d, conv2d, conv2d_weight_gradient, winograd_conv2d,
    winograd_conv2d_input_gradient, winograd_conv2d_weight_gradient, winograd_supports,
};
use std::time::Instant;

#[path = "common/args.rs"]
mod args;
use args::Args;

/// cnn7's convolutions on 28×28 inputs: (in channels, out channels, input size, stride).
const LAYERS: &[(usize, usize, usize, usize)] = &[
    (1, 64, 28, 1),
    (64, 64, 28, 1),
    (64, 128, 28, 2),
    (128, 128, 14, 1),
    (128, 128, 14, 1),
];

fn median_ms(reps: usize, mut run: impl FnMut()) -> f64 {
    run();
    let mut times: Vec<f64> = (0..reps)
        .map(|_| {
            let start = Instant::now();
            run();
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn main() {
    let args = Args::from_env();
    let batch: usize = args
        .value("--batch", "256")
        .parse()
        .expect("--batch takes a number");
    let threads = args.value("--threads", "2");
    let reps: usize = args
        .value("--reps", "5")
        .parse()
        .expect("--reps takes a number");
    unsafe {
        std::env::set_var("RAYON_NUM_THREADS", &threads);
    }
    let device = Device::Cpu;
    let mut total = [0.0; 3];
    for (index, &(cin, cout, size, stride)) in LAYERS.iter().enumerate() {
        let x = Tensor::rand(-1f32, 1f32, (batch, cin, size, size), &device).expect("input");
        let kernel = Tensor::rand(-0.1f32, 0.1f32, (cout, cin, 3, 3), &device).expect("kernel");
        let y = conv2d(&x, &kernel, stride, 1).expect("forward");
        let dy = y.ones_like().expect("gradient");
        let mut timings = vec![(
            "im2col",
            median_ms(reps, || {
                conv2d(&x, &kernel, stride, 1).expect("forward");
            }),
            median_ms(reps, || {
                conv_transpose2d(&dy, &kernel, stride, 1, size, size).expect("input gradient");
            }),
            median_ms(reps, || {
                conv2d_weight_gradient(&x, &dy, 3, stride, 1).expect("kernel gradient");
            }),
        )];
        if winograd_supports(x.dims(), kernel.dims(), stride, 1) {
            timings.push((
                "winograd",
                median_ms(reps, || {
                    winograd_conv2d(&x, &kernel, None).expect("forward");
                }),
                median_ms(reps, || {
                    winograd_conv2d_input_gradient(&dy, &kernel).expect("input gradient");
                }),
                median_ms(reps, || {
                    winograd_conv2d_weight_gradient(&x, &dy).expect("kernel gradient");
                }),
            ));
        }
        for (name, forward, input_gradient, kernel_gradient) in &timings {
            println!(
                "{{\"layer\": {index}, \"shape\": \"{cin}->{cout} {size}x{size} s{stride}\", \"kernel\": \"{name}\", \"forward_ms\": {forward:.2}, \"input_gradient_ms\": {input_gradient:.2}, \"kernel_gradient_ms\": {kernel_gradient:.2}}}"
            );
        }
        let (_, forward, input_gradient, kernel_gradient) = timings[timings.len() - 1];
        for (sum, ms) in total
            .iter_mut()
            .zip([forward, input_gradient, kernel_gradient])
        {
            *sum += ms;
        }
    }
    println!(
        "{{\"layer\": \"all (training kernels)\", \"forward_ms\": {:.2}, \"input_gradient_ms\": {:.2}, \"kernel_gradient_ms\": {:.2}}}",
        total[0], total[1], total[2]
    );
}
