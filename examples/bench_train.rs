//! Training-step throughput of one method.
//!
//! `cargo run --release --example bench_train -- --arch cnn-small --method ibp --batch 256 --threads 2 [--steps 20] [--warmup 3] [--cifar] [--json]`
//! prints the median step time over `--steps` steps after `--warmup` warm-up steps, as
//! `{"ms_per_step": …, "samples_per_s": …}` with `--json`. Random images, full ε from the first
//! step (no warm-up or ramp), IBP initialisation for certified methods.

use candle_core::{Device, Tensor};
use cthpo::model::{Net, NetSpec};
use cthpo::train::{BatchProgress, Control, Method, TrainConfig, TrainObserver, TrainOptions, fit};
use std::time::Instant;

#[path = "common/args.rs"]
mod args;
use args::Args;

struct Timer {
    last: Instant,
    times: Vec<f64>,
}

impl TrainObserver for Timer {
    fn on_batch(&mut self, _progress: &BatchProgress) -> Control {
        let now = Instant::now();
        self.times.push((now - self.last).as_secs_f64());
        self.last = now;
        Control::Continue
    }
}

fn main() {
    let args = Args::from_env();
    let arch = args.value("--arch", "cnn-small");
    let method: Method = args.value("--method", "ibp").parse().expect("method");
    let batch: usize = args
        .value("--batch", "256")
        .parse()
        .expect("--batch takes a number");
    let threads = args.value("--threads", "2");
    let steps: usize = args
        .value("--steps", "20")
        .parse()
        .expect("--steps takes a number");
    let warmup: usize = args
        .value("--warmup", "3")
        .parse()
        .expect("--warmup takes a number");
    let cifar = args.has("--cifar");
    let json = args.has("--json");
    // candle and rayon size their pools from this when they start; candle's element-wise
    // workers must not spin between ops on small machines (as in the cthpo binary).
    unsafe {
        std::env::set_var("RAYON_NUM_THREADS", &threads);
        if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
            std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "0");
        }
    }
    cthpo::kernels::retain_freed_memory();
    let (shape, normalization, eps) = if cifar {
        let stats = (vec![0.4914, 0.4822, 0.4465], vec![0.2470, 0.2435, 0.2616]);
        ([3, 32, 32], Some(stats), 2.0 / 255.0)
    } else {
        ([1, 28, 28], None, 0.1)
    };
    let spec = NetSpec::builtin(&arch, shape, 10, normalization).expect("architecture");
    let mut net = Net::new(&spec, method.initialization(), 0).expect("network");
    let total = batch * (steps + warmup);
    let images = Tensor::rand(
        0f32,
        1f32,
        (total, shape[0], shape[1], shape[2]),
        &Device::Cpu,
    )
    .expect("images");
    let labels = Tensor::new(
        (0..total as u32).map(|i| i % 10).collect::<Vec<_>>(),
        &Device::Cpu,
    )
    .expect("labels");
    let config = TrainConfig {
        batch_size: batch,
        warm_up_fraction: 0.0,
        ramp_up_fraction: 0.0,
        // β stays 1, so CROWN-IBP's backward pass runs on every step.
        end_beta: 1.0,
        ..TrainConfig::default()
    };
    let options = TrainOptions {
        epochs: 1,
        eps,
        seed: 0,
    };
    let mut timer = Timer {
        last: Instant::now(),
        times: Vec::new(),
    };
    fit(
        &mut net, method, &config, &options, &images, &labels, &mut timer,
    )
    .expect("training");
    let mut times: Vec<f64> = timer.times.into_iter().skip(warmup).collect();
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    if json {
        println!(
            "{{\"arch\": \"{arch}\", \"method\": \"{method}\", \"batch\": {batch}, \"threads\": {threads}, \"ms_per_step\": {:.3}, \"samples_per_s\": {:.1}}}",
            median * 1e3,
            batch as f64 / median
        );
    } else {
        println!(
            "{arch} {method} batch {batch}, {threads} thread(s): {:.1} ms/step, {:.0} samples/s (median of {})",
            median * 1e3,
            batch as f64 / median,
            times.len()
        );
    }
}
