//! What a method's default configuration reaches at each budget: trains and scores it.
//!
//! `cargo run --release --example sweep_defaults -- --methods ibp,sabr --budgets 6x5000,20x10000
//! [--val-samples 1000] [--seeds 0,1] [--eps 0.1] [--arch cnn-small] [--data-dir DIR]
//! [--test] [--set key=value ...]`
//!
//! A budget `EPOCHSxIMAGES` trains for EPOCHS epochs on the first IMAGES of the training split
//! (`all` for every image). Scores are the validation split's first `--val-samples` images
//! (natural, PGD, cascade-certified), or with `--test` the test split's. Prints one markdown
//! row per (method, budget, seed); `--set` overrides the defaults (e.g. to compare a candidate
//! default), keys a method does not read are skipped for that method.

#[path = "common/args.rs"]
mod args;

use args::Args;
use cthpo::data::{DataSource, DatasetName, load};
use cthpo::eval::{EvalConfig, evaluate};
use cthpo::model::{Net, NetSpec};
use cthpo::train::{Method, NoObserver, TrainConfig, TrainOptions, fit};
use std::collections::BTreeMap;
use std::path::PathBuf;

fn main() {
    // As the cthpo binary: candle's workers must not spin between ops on small machines.
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        // SAFETY: no other thread exists yet.
        unsafe { std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "0") };
    }
    cthpo::kernels::retain_freed_memory();
    let args = Args::from_env();
    let methods: Vec<Method> = args
        .value("--methods", "ibp")
        .split(',')
        .map(|m| m.parse().expect("--methods takes method names"))
        .collect();
    let budgets: Vec<(usize, Option<usize>)> = args
        .value("--budgets", "6x5000")
        .split(',')
        .map(|b| {
            let (epochs, images) = b.split_once('x').expect("a budget is EPOCHSxIMAGES");
            let images = (images != "all").then(|| images.parse().expect("image count"));
            (epochs.parse().expect("epoch count"), images)
        })
        .collect();
    let seeds: Vec<u64> = args
        .value("--seeds", "0")
        .split(',')
        .map(|s| s.parse().expect("--seeds takes numbers"))
        .collect();
    let val_samples: usize = args.parsed("--val-samples", "1000");
    let eps: f64 = args.parsed("--eps", "0.1");
    let arch = args.value("--arch", "cnn-small");
    let use_test = args.has("--test");
    // `--set` may repeat, so it is read off the raw arguments.
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let overrides: Vec<(String, serde_json::Value)> = raw
        .iter()
        .enumerate()
        .filter(|(_, a)| *a == "--set")
        .map(|(i, _)| TrainConfig::parse_assignment(&raw[i + 1]).expect("key=value"))
        .collect();
    let source = DataSource::from(args.optional("--data-dir").map(PathBuf::from));
    let dataset = DatasetName::Mnist;
    let splits = load(dataset, &source).expect("loading MNIST");
    println!("| method | epochs × images | seed | natural % | PGD % | certified % | train s |");
    println!("|---|---|---|---|---|---|---|");
    for &method in &methods {
        let keys = method.keys();
        let values: BTreeMap<String, serde_json::Value> = overrides
            .iter()
            .filter(|(key, _)| keys.contains(&key.as_str()))
            .cloned()
            .collect();
        let config = TrainConfig::from_map(method, &values).expect("configuration");
        for &(epochs, images) in &budgets {
            for &seed in &seeds {
                let (train, validation) = splits.train.split(val_samples, seed);
                let train = match images {
                    Some(count) => train.take(count),
                    None => train,
                };
                let scored = if use_test {
                    splits.test.take(val_samples)
                } else {
                    validation
                };
                let (images_tensor, labels) = train.tensors().expect("training tensors");
                let spec = NetSpec::builtin(
                    &arch,
                    dataset.input_shape(),
                    dataset.num_classes(),
                    dataset.normalization(),
                )
                .expect("architecture");
                let mut net = Net::new(&spec, method.initialization(), seed).expect("network");
                let options = TrainOptions { epochs, eps, seed };
                let row = |cells: String| {
                    println!(
                        "| {method} | {epochs} × {} | {seed} | {cells} |",
                        train.len()
                    )
                };
                match fit(
                    &mut net,
                    method,
                    &config,
                    &options,
                    &images_tensor,
                    &labels,
                    &mut NoObserver,
                ) {
                    Ok(summary) => {
                        let (val_images, val_labels) = scored.tensors().expect("tensors");
                        let report = evaluate(
                            &net,
                            &val_images,
                            &val_labels,
                            &EvalConfig::cascade(eps),
                            |_, _| {},
                        )
                        .expect("evaluation");
                        row(format!(
                            "{:.1} | {:.1} | {:.1} | {:.0}",
                            100.0 * report.natural_accuracy,
                            100.0 * report.adversarial_accuracy,
                            100.0 * report.certified_accuracy,
                            summary.seconds
                        ));
                    }
                    Err(error) => row(format!("failed: {error} | | | ")),
                }
            }
        }
    }
}
