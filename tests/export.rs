//! `cthpo export`: the ONNX model computes our logits (checked with ONNX's checker and
//! onnxruntime, ignored by default: it needs Python), its layers and weights decode as written,
//! the VNN-LIB properties encode the clipped ε-ball and the label, `instances.csv` lists them,
//! and bad input is refused with a clear error before anything is written.

mod common;

use candle_core::{Device, Tensor};
use cthpo::data::{DataSource, DatasetName};
use cthpo::export::onnx_proto::ModelProto;
use cthpo::export::{BenchmarkFiles, ExportError, onnx_bytes, write_benchmark};
use cthpo::model::{Initialization, LayerSpec, Net, NetSpec, parameter_slots};
use prost::Message;
use rand::{Rng, SeedableRng, rngs::StdRng};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cthpo-export-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn cthpo(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cthpo"))
        .args(args)
        .output()
        .unwrap()
}

/// Normalisation, convolutions and linear layers each followed by a BatchNorm that folds into
/// them, ReLU and flatten.
fn folded_spec() -> NetSpec {
    use LayerSpec::*;
    NetSpec {
        input_shape: [3, 8, 8],
        layers: vec![
            Normalize {
                mean: vec![0.4, 0.5, 0.6],
                std: vec![0.2, 0.25, 0.3],
            },
            Conv2d {
                out_channels: 8,
                kernel_size: 3,
                stride: 1,
                padding: 1,
            },
            BatchNorm {},
            Relu,
            Conv2d {
                out_channels: 6,
                kernel_size: 4,
                stride: 2,
                padding: 1,
            },
            Relu,
            Flatten,
            Linear { out_features: 20 },
            BatchNorm {},
            Relu,
            Linear { out_features: 10 },
        ],
    }
}

/// BatchNorms that follow no affine layer (2-D after a ReLU, 1-D after flatten), kept as
/// `BatchNormalization`.
fn unfolded_spec() -> NetSpec {
    use LayerSpec::*;
    NetSpec {
        input_shape: [1, 6, 6],
        layers: vec![
            Conv2d {
                out_channels: 4,
                kernel_size: 3,
                stride: 1,
                padding: 0,
            },
            Relu,
            BatchNorm {},
            Flatten,
            BatchNorm {},
            Linear { out_features: 12 },
            Relu,
            Linear { out_features: 5 },
        ],
    }
}

/// A network of `spec` whose every parameter and BatchNorm statistic is random (variances
/// in [0.2, 2]), saved as a checkpoint and loaded back.
fn random_net(spec: &NetSpec, dir: &Path, seed: u64) -> Net {
    let shapes = spec.activation_shapes().unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut tensors = HashMap::new();
    for slot in parameter_slots(spec, &shapes) {
        let count: usize = slot.dims.iter().product();
        let batch_norm = matches!(spec.layers[slot.layer], LayerSpec::BatchNorm {});
        let fan_in: usize = slot.dims.iter().skip(1).product::<usize>().max(1);
        let range = match (slot.role, batch_norm) {
            ("running_var", _) => 0.2..2.0,
            ("weight", true) => 0.5..1.5,
            ("weight", false) => {
                let bound = 1.5 / (fan_in as f32).sqrt();
                -bound..bound
            }
            _ => -0.5..0.5,
        };
        let values: Vec<f32> = (0..count)
            .map(|_| rng.random_range(range.clone()))
            .collect();
        let tensor = Tensor::from_vec(values, slot.dims.clone(), &Device::Cpu).unwrap();
        tensors.insert(slot.name, tensor);
    }
    let path = dir.join(format!("net-{seed}.safetensors"));
    candle_core::safetensors::save(&tensors, &path).unwrap();
    Net::load(spec, &path).unwrap()
}

fn random_images(spec: &NetSpec, count: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let len: usize = spec.input_shape.iter().product();
    (0..count)
        .map(|_| (0..len).map(|_| rng.random_range(0.0..=1.0)).collect())
        .collect()
}

fn our_logits(net: &Net, images: &[Vec<f32>]) -> Vec<Vec<f32>> {
    let [c, h, w] = net.spec().input_shape;
    let flat: Vec<f32> = images.concat();
    let input = Tensor::from_vec(flat, (images.len(), c, h, w), &Device::Cpu).unwrap();
    net.forward(&input).unwrap().to_vec2::<f32>().unwrap()
}

fn op_types(model: &ModelProto) -> Vec<String> {
    let graph = model.graph.as_ref().unwrap();
    graph
        .node
        .iter()
        .map(|n| n.op_type.clone().unwrap())
        .collect()
}

const FOLDED_OPS: [&str; 10] = [
    "Sub", "Div", "Conv", "Relu", "Conv", "Relu", "Flatten", "Gemm", "Relu", "Gemm",
];
const UNFOLDED_OPS: [&str; 8] = [
    "Conv",
    "Relu",
    "BatchNormalization",
    "Flatten",
    "BatchNormalization",
    "Gemm",
    "Relu",
    "Gemm",
];

/// What tests/python/onnx_check.py reports for an ONNX file: after `onnx.checker`, the
/// operators, opset and shapes, and onnxruntime's logits for each image.
fn onnxruntime_report(python: &Path, onnx: &Path, images: &[Vec<f32>]) -> serde_json::Value {
    let inputs = onnx.with_extension("inputs.json");
    std::fs::write(&inputs, serde_json::to_string(images).unwrap()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/onnx_check.py");
    let output = Command::new(python)
        .arg(&script)
        .arg(onnx)
        .arg(&inputs)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "onnx_check.py failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// `ours − theirs` per sample and class.
fn logit_differences(ours: &[Vec<f32>], report: &serde_json::Value) -> Vec<Vec<f32>> {
    let theirs: Vec<Vec<f32>> = serde_json::from_value(report["outputs"].clone()).unwrap();
    assert_eq!(theirs.len(), ours.len());
    ours.iter()
        .zip(&theirs)
        .map(|(a, b)| {
            assert_eq!(a.len(), b.len());
            a.iter().zip(b).map(|(x, y)| x - y).collect()
        })
        .collect()
}

#[test]
#[ignore = "needs Python with onnx and onnxruntime (./.venv or CTHPO_ONNX_PYTHON); .ci/run runs it with --ignored"]
fn onnxruntime_computes_our_logits_for_every_layer_kind() {
    let python = common::venv_python("CTHPO_ONNX_PYTHON", "onnx onnxruntime");
    let dir = temp_dir("onnxruntime");
    for (spec, ops, seed) in [
        (folded_spec(), &FOLDED_OPS[..], 1),
        (unfolded_spec(), &UNFOLDED_OPS[..], 2),
    ] {
        let net = random_net(&spec, &dir, seed);
        let onnx = dir.join(format!("net-{seed}.onnx"));
        let bytes = onnx_bytes(&net).unwrap();
        std::fs::write(&onnx, &bytes).unwrap();
        let images = random_images(&spec, 6, seed + 10);
        let report = onnxruntime_report(&python, &onnx, &images);
        assert_eq!(report["ops"], serde_json::json!(ops));
        assert!(report["opset"].as_i64().unwrap() >= 13);
        let [c, h, w] = spec.input_shape;
        assert_eq!(report["input_shape"], serde_json::json!([1, c, h, w]));
        assert_eq!(
            report["output_shape"],
            serde_json::json!([1, net.num_classes()])
        );
        let ours = our_logits(&net, &images);
        for (sample, row) in logit_differences(&ours, &report).iter().enumerate() {
            for (class, difference) in row.iter().enumerate() {
                let x = ours[sample][class];
                assert!(
                    difference.abs() <= 1e-4 * (1.0 + x.abs()),
                    "net {seed}, sample {sample}, class {class}: ours {x}, onnxruntime {}",
                    x - difference
                );
            }
        }
        // Not a constant network: the logits differ between images.
        assert!(ours[0] != ours[1]);

        // The comparison resolves small errors: a last-layer bias moved by 0.01 in the file
        // moves onnxruntime's logit of that class by 0.01 and no other.
        let mut model = ModelProto::decode(bytes.as_slice()).unwrap();
        let last_bias = format!("{}.bias", spec.layers.len() - 1);
        let graph = model.graph.as_mut().unwrap();
        let bias = graph
            .initializer
            .iter_mut()
            .find(|t| t.name.as_deref() == Some(last_bias.as_str()))
            .unwrap();
        let raw = bias.raw_data.as_mut().unwrap();
        let moved = f32::from_le_bytes(raw[..4].try_into().unwrap()) + 0.01;
        raw[..4].copy_from_slice(&moved.to_le_bytes());
        let tampered = dir.join(format!("tampered-{seed}.onnx"));
        std::fs::write(&tampered, model.encode_to_vec()).unwrap();
        let report = onnxruntime_report(&python, &tampered, &images);
        for row in logit_differences(&ours, &report) {
            assert!((row[0] + 0.01).abs() < 1e-3, "{row:?}");
            assert!(row[1..].iter().all(|d| d.abs() < 1e-3), "{row:?}");
        }
    }
}

#[test]
fn onnx_file_decodes_to_the_layers_and_weights_it_was_written_from() {
    let dir = temp_dir("decode");
    let net = random_net(&unfolded_spec(), &dir, 3);
    let model = ModelProto::decode(onnx_bytes(&net).unwrap().as_slice()).unwrap();
    assert_eq!(op_types(&model), UNFOLDED_OPS);
    assert_eq!(model.opset_import.len(), 1);
    assert_eq!(model.opset_import[0].version, Some(13));
    assert_eq!(model.opset_import[0].domain.as_deref(), Some(""));
    let graph = model.graph.unwrap();
    let dims = |v: &cthpo::export::onnx_proto::ValueInfoProto| -> Vec<i64> {
        let shape = v
            .r#type
            .clone()
            .unwrap()
            .tensor_type
            .unwrap()
            .shape
            .unwrap();
        shape.dim.iter().map(|d| d.dim_value.unwrap()).collect()
    };
    assert_eq!(dims(&graph.input[0]), [1, 1, 6, 6]);
    assert_eq!(dims(&graph.output[0]), [1, 5]);
    // Unfolded, every initializer is a state-dict tensor of the checkpoint, byte for byte.
    let checkpoint =
        candle_core::safetensors::load(dir.join("net-3.safetensors"), &Device::Cpu).unwrap();
    let initializers: BTreeMap<String, Vec<f32>> = graph
        .initializer
        .iter()
        .map(|t| {
            let bytes = t.raw_data.as_ref().unwrap();
            let values = bytes
                .chunks(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            (t.name.clone().unwrap(), values)
        })
        .collect();
    let mut expected = BTreeMap::new();
    for (name, tensor) in &checkpoint {
        let values = tensor.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        expected.insert(name.clone(), values);
    }
    assert_eq!(initializers, expected);

    // Folded, no BatchNormalization remains and the BatchNorms' tensors are gone.
    let folded = random_net(&folded_spec(), &dir, 4);
    let model = ModelProto::decode(onnx_bytes(&folded).unwrap().as_slice()).unwrap();
    assert_eq!(op_types(&model), FOLDED_OPS);
    let names: BTreeSet<String> = model
        .graph
        .unwrap()
        .initializer
        .iter()
        .map(|t| t.name.clone().unwrap())
        .collect();
    let expected: BTreeSet<String> = [
        "0.mean",
        "0.std",
        "1.weight",
        "1.bias",
        "4.weight",
        "4.bias",
        "7.weight",
        "7.bias",
        "10.weight",
        "10.bias",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(names, expected);
}

/// The top-level forms of an SMT-LIB / VNN-LIB text, as nested lists of atoms.
#[derive(Debug, Clone, PartialEq)]
enum Sexp {
    Atom(String),
    List(Vec<Sexp>),
}

fn parse_sexps(text: &str) -> Vec<Sexp> {
    let mut stack: Vec<Vec<Sexp>> = vec![Vec::new()];
    let mut atom = String::new();
    let flush = |atom: &mut String, stack: &mut Vec<Vec<Sexp>>| {
        if !atom.is_empty() {
            stack
                .last_mut()
                .unwrap()
                .push(Sexp::Atom(std::mem::take(atom)));
        }
    };
    for line in text.lines() {
        let line = line.split(';').next().unwrap();
        for ch in line.chars() {
            match ch {
                '(' => {
                    flush(&mut atom, &mut stack);
                    stack.push(Vec::new());
                }
                ')' => {
                    flush(&mut atom, &mut stack);
                    let list = stack.pop().unwrap();
                    stack
                        .last_mut()
                        .expect("unbalanced ')'")
                        .push(Sexp::List(list));
                }
                c if c.is_whitespace() => flush(&mut atom, &mut stack),
                c => atom.push(c),
            }
        }
        flush(&mut atom, &mut stack);
    }
    assert_eq!(stack.len(), 1, "unbalanced '('");
    stack.pop().unwrap()
}

/// What a robustness property says: declared inputs and outputs, each input's box, and the
/// (other class, label) pairs of the unsafe disjunction.
#[derive(Debug)]
struct Property {
    inputs: usize,
    outputs: usize,
    bounds: Vec<(Option<f64>, Option<f64>)>,
    unsafe_pairs: BTreeSet<(usize, usize)>,
}

fn index_of(name: &str, prefix: &str) -> usize {
    name.strip_prefix(prefix)
        .and_then(|i| i.parse().ok())
        .unwrap_or_else(|| panic!("`{name}` is not {prefix}<index>"))
}

fn read_property(text: &str) -> Property {
    let atom = |s: &Sexp| match s {
        Sexp::Atom(a) => a.clone(),
        other => panic!("expected an atom, got {other:?}"),
    };
    let mut property = Property {
        inputs: 0,
        outputs: 0,
        bounds: Vec::new(),
        unsafe_pairs: BTreeSet::new(),
    };
    for form in parse_sexps(text) {
        let Sexp::List(items) = form else {
            panic!("top-level atom")
        };
        match atom(&items[0]).as_str() {
            "declare-const" => {
                assert_eq!(atom(&items[2]), "Real");
                let name = atom(&items[1]);
                if name.starts_with("X_") {
                    assert_eq!(index_of(&name, "X_"), property.inputs);
                    property.inputs += 1;
                    property.bounds.push((None, None));
                } else {
                    assert_eq!(index_of(&name, "Y_"), property.outputs);
                    property.outputs += 1;
                }
            }
            "assert" => {
                let Sexp::List(body) = &items[1] else {
                    panic!("assert of an atom")
                };
                match atom(&body[0]).as_str() {
                    op @ ("<=" | ">=") => {
                        let i = index_of(&atom(&body[1]), "X_");
                        let value: f64 = atom(&body[2]).parse().unwrap();
                        let slot = if op == "<=" {
                            &mut property.bounds[i].1
                        } else {
                            &mut property.bounds[i].0
                        };
                        assert!(slot.is_none(), "X_{i} bounded twice by {op}");
                        *slot = Some(value);
                    }
                    "or" => {
                        for clause in &body[1..] {
                            let Sexp::List(and) = clause else {
                                panic!("clause {clause:?}")
                            };
                            assert_eq!(atom(&and[0]), "and");
                            assert_eq!(and.len(), 2, "one comparison per clause");
                            let Sexp::List(cmp) = &and[1] else {
                                panic!("comparison {and:?}")
                            };
                            assert_eq!(atom(&cmp[0]), ">=");
                            let pair = (
                                index_of(&atom(&cmp[1]), "Y_"),
                                index_of(&atom(&cmp[2]), "Y_"),
                            );
                            property.unsafe_pairs.insert(pair);
                        }
                    }
                    other => panic!("unexpected assertion {other}"),
                }
            }
            other => panic!("unexpected command {other}"),
        }
    }
    property
}

#[test]
fn export_writes_onnx_properties_and_instances_for_the_test_images() {
    let dir = temp_dir("cli");
    let spec = NetSpec::builtin("cnn-small", [1, 28, 28], 10, None).unwrap();
    let model = dir.join("cnn-small.safetensors");
    Net::new(&spec, Initialization::Default, 5)
        .unwrap()
        .save(&model)
        .unwrap();
    let bench = dir.join("bench");
    let onnx = bench.join("onnx/net.onnx");
    let vnnlib = bench.join("vnnlib");
    let eps = 0.05;
    let output = cthpo(&[
        "export",
        "--model",
        model.to_str().unwrap(),
        "--arch",
        "cnn-small",
        "--onnx",
        onnx.to_str().unwrap(),
        "--vnnlib",
        vnnlib.to_str().unwrap(),
        "--samples",
        "4",
        "--eps",
        "0.05",
        "--timeout",
        "2m",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let model = ModelProto::decode(std::fs::read(&onnx).unwrap().as_slice()).unwrap();
    assert_eq!(
        op_types(&model),
        ["Conv", "Relu", "Flatten", "Gemm", "Relu", "Gemm"]
    );

    let test = cthpo::data::load(DatasetName::Mnist, &DataSource::Default)
        .unwrap()
        .test
        .take(4);
    let csv = std::fs::read_to_string(bench.join("instances.csv")).unwrap();
    let rows: Vec<Vec<&str>> = csv.lines().map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 4);
    let (mut clipped, mut inside) = (0, 0);
    for (index, row) in rows.iter().enumerate() {
        assert_eq!(row.len(), 3, "row {index}: {row:?}");
        assert_eq!(row[0], "onnx/net.onnx");
        assert_eq!(row[2], "120");
        assert!(bench.join(row[0]).is_file());
        let text = std::fs::read_to_string(bench.join(row[1])).unwrap();
        let property = read_property(&text);
        assert_eq!(property.inputs, 784);
        assert_eq!(property.outputs, 10);
        let label = usize::from(test.labels()[index]);
        let others: BTreeSet<(usize, usize)> = (0..10)
            .filter(|&j| j != label)
            .map(|j| (j, label))
            .collect();
        assert_eq!(property.unsafe_pairs, others, "image {index}");
        for (pixel, (&x, &(lower, upper))) in
            test.image(index).iter().zip(&property.bounds).enumerate()
        {
            let (lower, upper) = (lower.unwrap(), upper.unwrap());
            let x = f64::from(x);
            assert_eq!(lower, (x - eps).max(0.0), "image {index}, X_{pixel}");
            assert_eq!(upper, (x + eps).min(1.0), "image {index}, X_{pixel}");
            if lower == 0.0 || upper == 1.0 {
                clipped += 1;
            } else {
                inside += 1;
            }
        }
    }
    // Both kinds of pixel occur, so both the clipping and the plain ball were checked.
    assert!(
        clipped > 0 && inside > 0,
        "{clipped} clipped, {inside} inside"
    );
}

#[test]
fn export_refuses_bad_input_before_writing() {
    let dir = temp_dir("refusals");
    let spec = NetSpec::builtin("fc", [1, 28, 28], 10, None).unwrap();
    let model = dir.join("fc.safetensors");
    Net::new(&spec, Initialization::Default, 5)
        .unwrap()
        .save(&model)
        .unwrap();
    let onnx = dir.join("out/net.onnx");
    let vnnlib = dir.join("out/vnnlib");
    let model_text = model.to_str().unwrap();
    let missing = dir.join("no-such-run");
    let cases: [(&[&str], &str); 7] = [
        (&["--model", missing.to_str().unwrap()], "not found"),
        (&["--eps", "1.5"], "--eps 1.5 must be in [0, 1]"),
        (&["--eps", "-0.1"], "--eps -0.1 must be in [0, 1]"),
        (&["--eps", "nan"], "must be in [0, 1]"),
        (
            &["--samples", "2001"],
            "the mnist test split has 2000 images",
        ),
        (&["--samples", "0"], "--samples must be at least 1"),
        (&["--timeout", "soon"], "--timeout"),
    ];
    for (extra, message) in cases {
        let mut args = vec!["export"];
        if extra[0] != "--model" {
            args.extend(["--model", model_text]);
        }
        args.extend([
            "--arch",
            "fc",
            "--onnx",
            onnx.to_str().unwrap(),
            "--vnnlib",
            vnnlib.to_str().unwrap(),
        ]);
        args.extend_from_slice(extra);
        let output = cthpo(&args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{extra:?} was accepted");
        assert!(
            stderr.contains(message),
            "{extra:?}: expected `{message}` in:\n{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{extra:?}: {stderr}");
        assert!(!dir.join("out").exists(), "{extra:?} wrote files");
    }
}

#[test]
fn write_benchmark_names_the_path_it_cannot_write_and_refuses_bad_eps() {
    let dir = temp_dir("library");
    let net = random_net(&unfolded_spec(), &dir, 6);
    let images = cthpo::data::Dataset::new(vec![0.5; 36], vec![1], [1, 6, 6]).unwrap();
    let blocker = dir.join("a-file");
    std::fs::write(&blocker, "not a directory").unwrap();
    let files = BenchmarkFiles {
        onnx: blocker.join("net.onnx"),
        vnnlib_dir: dir.join("vnnlib"),
        instances: dir.join("instances.csv"),
        timeout_seconds: 30.0,
    };
    let error = write_benchmark(&net, &images, 0.1, &files).unwrap_err();
    assert!(matches!(error, ExportError::Io { .. }), "{error}");
    assert!(error.to_string().contains("a-file"), "{error}");
    for eps in [f64::NAN, -0.01, 1.01, f64::INFINITY] {
        let error = write_benchmark(&net, &images, eps, &files).unwrap_err();
        assert!(matches!(error, ExportError::Eps(_)), "{error}");
    }
    // instances.csv separates its columns by commas.
    let comma = BenchmarkFiles {
        vnnlib_dir: dir.join("a,b"),
        ..files.clone()
    };
    let error = write_benchmark(&net, &images, 0.1, &comma).unwrap_err();
    assert!(matches!(error, ExportError::CsvPath { .. }), "{error}");
    assert!(!dir.join("a,b").exists());
    // A label outside the network's 5 classes.
    let images = cthpo::data::Dataset::new(vec![0.5; 36], vec![7], [1, 6, 6]).unwrap();
    let error = write_benchmark(&net, &images, 0.1, &files).unwrap_err();
    assert!(error.to_string().contains("label 7"), "{error}");
}
