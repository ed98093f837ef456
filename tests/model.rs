//! Networks: builtin shapes, PyTorch state-dict names, safetensors round trips, clear errors,
//! seeded initialisation and BatchNorm statistics.

use candle_core::{Device, Tensor};
use cthpo::model::{Initialization, LayerSpec, ModelError, Net, NetSpec};
use rand::{Rng, SeedableRng, rngs::StdRng};

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("cthpo-model-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Uniform values in [0, 1) of the given shape from a fixed seed (same data every run).
fn seeded_uniform(seed: u64, shape: (usize, usize, usize, usize)) -> Tensor {
    let mut rng = StdRng::seed_from_u64(seed);
    let count = shape.0 * shape.1 * shape.2 * shape.3;
    let values: Vec<f32> = (0..count).map(|_| rng.random_range(0.0..1.0)).collect();
    Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
}

fn keys(net: &Net) -> Vec<String> {
    net.named_vars().iter().map(|v| v.name.clone()).collect()
}

#[test]
fn cnn_small_matches_the_pytorch_sequential_layout() {
    let spec = NetSpec::builtin("cnn-small", [1, 28, 28], 10, None).unwrap();
    let net = Net::new(&spec, Initialization::Default, 0).unwrap();
    assert_eq!(
        keys(&net),
        [
            "0.weight", "0.bias", "3.weight", "3.bias", "5.weight", "5.bias"
        ]
    );
    let dims: Vec<Vec<usize>> = net
        .named_vars()
        .iter()
        .map(|v| v.var.dims().to_vec())
        .collect();
    assert_eq!(dims[0], [16, 1, 4, 4]);
    assert_eq!(dims[2], [100, 3136]);
    assert_eq!(dims[4], [10, 100]);
    let x = Tensor::zeros((3, 1, 28, 28), candle_core::DType::F32, &Device::Cpu).unwrap();
    assert_eq!(net.forward(&x).unwrap().dims(), [3, 10]);
}

#[test]
fn builtins_build_for_mnist_and_cifar_shapes() {
    for name in cthpo::model::BUILTIN_ARCHITECTURES {
        for (shape, normalization) in [
            ([1, 28, 28], None),
            (
                [3, 32, 32],
                Some((vec![0.5, 0.5, 0.5], vec![0.25, 0.25, 0.25])),
            ),
        ] {
            let with_norm = normalization.is_some();
            let spec = NetSpec::builtin(name, shape, 10, normalization).unwrap();
            assert_eq!(
                matches!(spec.layers[0], LayerSpec::Normalize { .. }),
                with_norm
            );
            assert_eq!(spec.num_classes().unwrap(), 10);
        }
    }
    let cnn7 = NetSpec::builtin("cnn7", [3, 32, 32], 10, None).unwrap();
    let batch_norms = cnn7
        .layers
        .iter()
        .filter(|l| matches!(l, LayerSpec::BatchNorm {}))
        .count();
    assert_eq!(batch_norms, 6);
    assert!(matches!(
        NetSpec::builtin("resnet", [1, 28, 28], 10, None),
        Err(ModelError::UnknownArchitecture { .. })
    ));
}

#[test]
fn same_seed_same_weights_and_ibp_init_has_shi_scale() {
    let spec = NetSpec::builtin("fc", [1, 28, 28], 10, None).unwrap();
    let a = Net::new(&spec, Initialization::Ibp, 42).unwrap();
    let b = Net::new(&spec, Initialization::Ibp, 42).unwrap();
    let c = Net::new(&spec, Initialization::Ibp, 43).unwrap();
    let first = |n: &Net| {
        n.named_vars()[0]
            .var
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    assert_eq!(first(&a), first(&b));
    assert_ne!(first(&a), first(&c));
    // Shi et al.: std = sqrt(2π) / fan_in, here fan_in = 784; biases zero.
    let weights = first(&a);
    let std = (weights.iter().map(|w| w * w).sum::<f32>() / weights.len() as f32).sqrt();
    let expected = (2.0 * std::f32::consts::PI).sqrt() / 784.0;
    assert!(
        (std / expected - 1.0).abs() < 0.02,
        "std {std} vs {expected}"
    );
    let bias = a.named_vars()[1].var.to_vec1::<f32>().unwrap();
    assert!(bias.iter().all(|b| *b == 0.0));
}

#[test]
fn safetensors_round_trip_keeps_weights_and_batch_norm_state() {
    let spec = NetSpec::builtin("cnn7", [1, 28, 28], 10, None).unwrap();
    let narrow = NetSpec {
        input_shape: [1, 12, 12],
        layers: spec.layers.clone(),
    };
    let mut net = Net::new(&narrow, Initialization::Default, 9).unwrap();
    let x = seeded_uniform(1, (8, 1, 12, 12));
    net.forward_train(&x).unwrap();
    let dir = temp_dir("roundtrip");
    let path = dir.join("net.safetensors");
    net.save(&path).unwrap();
    let loaded = Net::load(&narrow, &path).unwrap();
    assert_eq!(keys(&net), keys(&loaded));
    let y1 = net.forward(&x).unwrap().to_vec2::<f32>().unwrap();
    let y2 = loaded.forward(&x).unwrap().to_vec2::<f32>().unwrap();
    assert_eq!(y1, y2);
    let raw = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    assert!(raw.contains_key("1.num_batches_tracked"));
    assert!(raw.contains_key("1.running_var"));
}

#[test]
fn loading_a_mismatched_checkpoint_lists_every_problem() {
    let small = NetSpec::builtin("cnn-small", [1, 28, 28], 10, None).unwrap();
    let fc = NetSpec::builtin("fc", [1, 28, 28], 10, None).unwrap();
    let dir = temp_dir("mismatch");
    let path = dir.join("small.safetensors");
    Net::new(&small, Initialization::Default, 1)
        .unwrap()
        .save(&path)
        .unwrap();
    let message = Net::load(&fc, &path).unwrap_err().to_string();
    assert!(message.contains("small.safetensors"), "{message}");
    assert!(message.contains("missing key 1.weight"), "{message}");
    assert!(message.contains("unexpected key 0.weight"), "{message}");
    assert!(
        message.contains("key 3.weight has shape [100, 3136]"),
        "{message}"
    );
    let missing = Net::load(&fc, &dir.join("absent.safetensors"))
        .unwrap_err()
        .to_string();
    assert!(missing.contains("not found"), "{missing}");
    std::fs::write(dir.join("garbage.safetensors"), b"not a tensor file").unwrap();
    let garbage = Net::load(&fc, &dir.join("garbage.safetensors"))
        .unwrap_err()
        .to_string();
    assert!(
        garbage.contains("not a readable safetensors file"),
        "{garbage}"
    );
}

#[test]
fn batch_norm_training_uses_batch_statistics_and_updates_running_ones() {
    let spec = NetSpec {
        input_shape: [2, 4, 4],
        layers: vec![
            LayerSpec::Conv2d {
                out_channels: 3,
                kernel_size: 3,
                stride: 1,
                padding: 1,
            },
            LayerSpec::BatchNorm {},
            LayerSpec::Relu,
            LayerSpec::Flatten,
            LayerSpec::Linear { out_features: 2 },
        ],
    };
    let mut net = Net::new(&spec, Initialization::Default, 3).unwrap();
    let x = (seeded_uniform(2, (16, 2, 4, 4)) * 5.0).unwrap();
    let (_, stats) = net.forward_train(&x).unwrap();
    let (mean, variance) = stats.get(1).unwrap();
    let conv_out = net.detached();
    let pre = cthpo::bounds::propagate_layer(
        &conv_out,
        0,
        &cthpo::bounds::Interval {
            lower: x.clone(),
            upper: x.clone(),
        },
        cthpo::model::Normalization::Population,
    )
    .unwrap()
    .lower;
    let expected_mean = pre.mean((0, 2, 3)).unwrap().to_vec1::<f32>().unwrap();
    for (a, b) in mean.to_vec1::<f32>().unwrap().iter().zip(&expected_mean) {
        assert!((a - b).abs() < 1e-4);
    }
    assert!(variance.to_vec1::<f32>().unwrap().iter().all(|v| *v > 0.0));
    let running = net
        .named_vars()
        .iter()
        .find(|v| v.name == "1.running_mean")
        .unwrap();
    let running = running.var.to_vec1::<f32>().unwrap();
    for (r, m) in running.iter().zip(&expected_mean) {
        assert!(
            (r - 0.1 * m).abs() < 1e-4,
            "running mean {r} after one step from 0 toward {m}"
        );
    }
}

#[test]
fn yaml_network_descriptions_load_and_report_errors_with_the_file() {
    let dir = temp_dir("yaml");
    let good = dir.join("net.yaml");
    std::fs::write(
        &good,
        "input_shape: [1, 28, 28]\nlayers:\n  - conv2d: {out_channels: 8, kernel_size: 4, stride: 2, padding: 1}\n  - relu\n  - flatten\n  - linear: {out_features: 10}\n",
    )
    .unwrap();
    let spec = NetSpec::from_yaml_file(&good).unwrap();
    assert_eq!(spec.layers.len(), 4);
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, "input_shape: [1, 28, 28]\nlayers:\n  - conv2d: {out_channels: 8, kernel_size: 40}\n  - flatten\n  - linear: {out_features: 10}\n").unwrap();
    let message = NetSpec::from_yaml_file(&bad).unwrap_err().to_string();
    assert!(
        message.contains("bad.yaml") && message.contains("does not fit"),
        "{message}"
    );
    let unknown = dir.join("unknown.yaml");
    std::fs::write(&unknown, "input_shape: [1, 28, 28]\nlayers:\n  - dropout\n").unwrap();
    let message = NetSpec::from_yaml_file(&unknown).unwrap_err().to_string();
    assert!(
        message.contains("unknown.yaml") && message.contains("dropout"),
        "{message}"
    );
}
