//! Per-kernel timings of one shard of a training attack's forward/backward pair on `cnn-small`.
//!
//! `cargo run --release --example bench_attack_pair -- [--rows 128] [--reps 20]` runs each kernel
//! of the pair (convolution + bias, ReLU, linear 3136→100, its input gradient, the ReLU-masked
//! transposed convolution, the signed step) on `--rows` random MNIST-sized samples inside
//! `kernels::sequentially`, as one shard of a sharded attack runs them, and prints the fastest
//! of 7 means over `--reps` calls per kernel, and their sum. Run it with `RAYON_NUM_THREADS=1`
//! (or two copies side by side to see what two threads cost each other).

use candle_core::{Device, Tensor};
use cthpo::kernels::{
    conv2d_bias, linear, linear_input_gradient, relu, relu_masked_conv_transpose2d, sequentially,
    signed_step,
};
use std::time::Instant;

/// The value after `flag` on the command line, or `default`.
fn argument(flag: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().expect("a number"))
        .unwrap_or(default)
}

/// The fastest of 7 mean times (ms) of `reps` calls of `f`.
fn fastest(reps: usize, mut f: impl FnMut()) -> f64 {
    (0..7)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..reps {
                f();
            }
            start.elapsed().as_secs_f64() * 1e3 / reps as f64
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() -> candle_core::Result<()> {
    let rows = argument("--rows", 128);
    let reps = argument("--reps", 20).max(1);
    let cpu = Device::Cpu;
    let x = Tensor::rand(0f32, 1., (rows, 1, 28, 28), &cpu)?;
    let kernel = Tensor::rand(-0.3f32, 0.3, (16, 1, 4, 4), &cpu)?;
    let bias = Tensor::rand(-0.3f32, 0.3, 16, &cpu)?;
    let weight = Tensor::rand(-0.03f32, 0.03, (100, 3136), &cpu)?;
    let weight_bias = Tensor::rand(-0.03f32, 0.03, 100, &cpu)?;
    let (lower, upper) = ((&x - 0.1)?, (&x + 0.1)?);
    sequentially(|| -> candle_core::Result<()> {
        let pre = conv2d_bias(&x, &kernel, &bias, 2, 1)?;
        let hidden = relu(&pre)?.reshape((rows, 3136))?;
        let logits_gradient = Tensor::rand(-1f32, 1., (rows, 100), &cpu)?;
        let hidden_gradient = linear_input_gradient(&logits_gradient, &weight, pre.dims())?;
        let input_gradient =
            relu_masked_conv_transpose2d(&hidden_gradient, &pre, &kernel, (2, 1), (28, 28))?;
        let times = [
            (
                "convolution",
                fastest(reps, || drop(conv2d_bias(&x, &kernel, &bias, 2, 1))),
            ),
            ("relu", fastest(reps, || drop(relu(&pre)))),
            (
                "linear",
                fastest(reps, || drop(linear(&hidden, &weight, &weight_bias))),
            ),
            (
                "linear_input_gradient",
                fastest(reps, || {
                    drop(linear_input_gradient(&logits_gradient, &weight, pre.dims()))
                }),
            ),
            (
                "relu_masked_transposed_convolution",
                fastest(reps, || {
                    drop(relu_masked_conv_transpose2d(
                        &hidden_gradient,
                        &pre,
                        &kernel,
                        (2, 1),
                        (28, 28),
                    ))
                }),
            ),
            (
                "signed_step",
                fastest(reps, || {
                    drop(signed_step(&x, &input_gradient, (&lower, &upper), 0.05))
                }),
            ),
        ];
        for (kernel, ms) in &times {
            println!("{{\"rows\": {rows}, \"kernel\": \"{kernel}\", \"ms\": {ms:.3}}}");
        }
        let total: f64 = times.iter().map(|(_, ms)| ms).sum();
        println!("{{\"rows\": {rows}, \"kernel\": \"pair\", \"ms\": {total:.3}}}");
        Ok(())
    })
}
