//! Throughput of the bound methods: samples/second for IBP, CROWN-IBP and CROWN.
//!
//! `cargo run --release --example bench_bounds -- --arch cnn-small --batch 256 --threads 2 [--json]`
//! Random IBP-initialised weights and random images; ε defaults to 0.1 (MNIST) or 2/255 (CIFAR).
//! Full CROWN needs one backward pass per unstable neuron, so it runs on `--crown-batch` samples.
//! `--weights FILE.safetensors` bounds a trained network instead (the same file
//! `benches/lirpa_certify_reference.py --weights` reads); `--methods ibp,crown-ibp` picks methods.

use candle_core::{Device, Tensor};
use cthpo::bounds::{BoundMethod, Interval, margin_lower_bounds};
use cthpo::model::{Initialization, Net, NetSpec, Normalization};
use std::time::Instant;

#[path = "common/args.rs"]
mod args;
use args::Args;

struct Options {
    arch: String,
    batch: usize,
    crown_batch: usize,
    threads: usize,
    cifar: bool,
    eps: Option<f64>,
    json: bool,
    min_seconds: f64,
    weights: Option<std::path::PathBuf>,
    methods: Option<String>,
}

fn parse() -> Options {
    let args = Args::from_env();
    args.check_known(
        &[
            "--arch",
            "--batch",
            "--crown-batch",
            "--threads",
            "--eps",
            "--min-seconds",
            "--weights",
            "--methods",
        ],
        &["--cifar", "--json"],
        "the header of examples/bench_bounds.rs",
    );
    Options {
        arch: args.value("--arch", "cnn-small"),
        batch: args.parsed("--batch", "256"),
        crown_batch: args.parsed("--crown-batch", "8"),
        threads: args.parsed("--threads", "2"),
        cifar: args.has("--cifar"),
        eps: args
            .optional("--eps")
            .map(|e| e.parse().expect("--eps takes a number")),
        json: args.has("--json"),
        min_seconds: args.parsed("--min-seconds", "3"),
        weights: args.optional("--weights").map(Into::into),
        methods: args.optional("--methods"),
    }
}

fn main() {
    let options = parse();
    // candle and rayon read the thread count from this variable when their pools start.
    unsafe { std::env::set_var("RAYON_NUM_THREADS", options.threads.to_string()) };
    cthpo::kernels::retain_freed_memory();
    let (shape, normalization, default_eps) = if options.cifar {
        let stats = (vec![0.4914, 0.4822, 0.4465], vec![0.2470, 0.2435, 0.2616]);
        ([3, 32, 32], Some(stats), 2.0 / 255.0)
    } else {
        ([1, 28, 28], None, 0.1)
    };
    let eps = options.eps.unwrap_or(default_eps);
    let spec = NetSpec::builtin(&options.arch, shape, 10, normalization).expect("architecture");
    let net = match &options.weights {
        Some(path) => Net::load(&spec, path).expect("weights"),
        None => Net::new(&spec, Initialization::Ibp, 0).expect("network"),
    }
    .detached();
    let mut results = Vec::new();
    let chosen = |method: &BoundMethod| {
        options
            .methods
            .as_deref()
            .is_none_or(|list| list.split(',').any(|m| m == method.to_string()))
    };
    for method in BoundMethod::ALL.into_iter().filter(chosen) {
        let batch = if method == BoundMethod::Crown {
            options.crown_batch
        } else {
            options.batch
        };
        let images = Tensor::rand(
            0f32,
            1f32,
            (batch, shape[0], shape[1], shape[2]),
            &Device::Cpu,
        )
        .expect("images");
        let labels = Tensor::new(
            (0..batch as u32).map(|i| i % 10).collect::<Vec<_>>(),
            &Device::Cpu,
        )
        .expect("labels");
        let input = Interval::linf_ball(&images, eps).expect("box");
        let run = || {
            margin_lower_bounds(&net, &input, &labels, method, Normalization::Population)
                .expect("bounds")
        };
        run(); // warm-up
        let mut times = Vec::new();
        let start = Instant::now();
        while times.len() < 3 || start.elapsed().as_secs_f64() < options.min_seconds {
            let t = Instant::now();
            run();
            times.push(t.elapsed().as_secs_f64());
            if times.len() >= 50 {
                break;
            }
        }
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        results.push((method, batch, median, batch as f64 / median));
    }
    if options.json {
        let entries: Vec<String> = results
            .iter()
            .map(|(m, b, t, s)| {
                format!(
                    "\"{m}\": {{\"batch\": {b}, \"ms_per_batch\": {:.3}, \"samples_per_s\": {s:.2}}}",
                    t * 1e3
                )
            })
            .collect();
        println!(
            "{{\"arch\": \"{}\", \"threads\": {}, \"eps\": {eps}, {}}}",
            options.arch,
            options.threads,
            entries.join(", ")
        );
    } else {
        println!(
            "{} ({:?}), ε = {eps:.4}, {} thread(s)",
            options.arch, shape, options.threads
        );
        for (method, batch, median, rate) in results {
            println!(
                "  {method:<10} batch {batch:>4}: {:>10.2} ms/batch  {rate:>10.1} samples/s",
                median * 1e3
            );
        }
    }
}
