//! Our IBP, CROWN-IBP, CROWN and α-CROWN against auto_LiRPA on the same weights and inputs.
//!
//! The fixtures in `fixtures/bounds/` are produced by `fixtures/make_bounds_fixtures.py`, those in
//! `fixtures/alpha/` by `fixtures/make_alpha_fixtures.py` (PyTorch + auto_LiRPA; see
//! `fixtures/README.md`), so these tests check against a peer.

use candle_core::{Device, Tensor};
use cthpo::bounds::{
    AlphaConfig, BoundMethod, CrownIntermediate, Interval, alpha_crown_lower_bounds,
    crown_spec_bounds, margin_spec, spec_bounds,
};
use cthpo::model::{LayerSpec, Net, NetSpec, Normalization};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Deserialize)]
struct MethodBounds {
    margin_lower: Vec<Vec<f32>>,
    margin_upper: Vec<Vec<f32>>,
}

#[derive(Deserialize)]
struct Fixture {
    case: String,
    input_shape: [usize; 3],
    layers: Vec<LayerSpec>,
    eps: f64,
    inputs: Vec<Vec<f32>>,
    labels: Vec<u32>,
    logits: Vec<Vec<f32>>,
    bounds: BTreeMap<String, MethodBounds>,
}

fn fixtures() -> Vec<(Fixture, PathBuf)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/bounds");
    let mut found: Vec<_> = std::fs::read_dir(&dir)
        .expect("fixtures/bounds exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    found.sort();
    found
        .into_iter()
        .map(|json| {
            let fixture: Fixture =
                serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
            (fixture, json.with_extension("safetensors"))
        })
        .collect()
}

/// Agreement within float error: absolute for small values, relative for large ones.
fn close(ours: f32, theirs: f32) -> bool {
    (ours - theirs).abs() <= 2e-4 + 2e-4 * theirs.abs()
}

#[test]
fn bounds_match_auto_lirpa() {
    let cases = fixtures();
    assert!(
        cases.len() >= 3,
        "expected the committed fixtures, found {}",
        cases.len()
    );
    let mut compared = 0;
    let mut crown_differs = 0;
    let mut total_widths = (0.0f64, 0.0f64);
    for (fixture, weights) in cases {
        let spec = NetSpec {
            input_shape: fixture.input_shape,
            layers: fixture.layers.clone(),
        };
        let net = Net::load(&spec, &weights).unwrap();
        let batch = fixture.inputs.len();
        let [c, h, w] = fixture.input_shape;
        let images =
            Tensor::from_vec(fixture.inputs.concat(), (batch, c, h, w), &Device::Cpu).unwrap();
        let logits = net.forward(&images).unwrap().to_vec2::<f32>().unwrap();
        for (ours, theirs) in logits.iter().flatten().zip(fixture.logits.iter().flatten()) {
            assert!(
                close(*ours, *theirs),
                "{}: logits {ours} vs PyTorch {theirs}",
                fixture.case
            );
        }
        let labels = Tensor::new(fixture.labels.as_slice(), &Device::Cpu).unwrap();
        let margin = margin_spec(&labels, net.num_classes()).unwrap();
        let input = Interval::linf_ball(&images, fixture.eps).unwrap();
        let mut widths = (0.0f64, 0.0f64);
        // α-CROWN is an optimisation, not a fixed formula: compared separately below.
        for method in BoundMethod::FAST {
            let key = method.name().replace('-', "_");
            let reference = &fixture.bounds[&key];
            // auto_LiRPA's CROWN is ours with plain intermediate bounds; ours by default also
            // intersects them with interval bounds, compared below as a whole.
            let ours = if method == BoundMethod::Crown {
                crown_spec_bounds(
                    &net,
                    &input,
                    &margin,
                    CrownIntermediate::Plain,
                    Normalization::Population,
                )
                .unwrap()
            } else {
                spec_bounds(&net, &input, &margin, method, Normalization::Population).unwrap()
            };
            let lower = ours.lower.to_vec2::<f32>().unwrap();
            let upper = ours.upper.to_vec2::<f32>().unwrap();
            for b in 0..batch {
                for j in 0..lower[b].len() {
                    let (l, u) = (lower[b][j], upper[b][j]);
                    let (rl, ru) = (reference.margin_lower[b][j], reference.margin_upper[b][j]);
                    compared += 1;
                    assert!(
                        close(l, rl) && close(u, ru),
                        "{} {method} sample {b} margin {j}: ours [{l}, {u}] vs auto_LiRPA [{rl}, {ru}]",
                        fixture.case
                    );
                }
            }
            if method == BoundMethod::Crown {
                let intersected = spec_bounds(
                    &net,
                    &input,
                    &margin,
                    BoundMethod::Crown,
                    Normalization::Population,
                )
                .unwrap();
                let width = |bounds: &Interval| -> f64 {
                    let gap = (&bounds.upper - &bounds.lower).unwrap();
                    f64::from(gap.sum_all().unwrap().to_scalar::<f32>().unwrap())
                };
                widths = (width(&intersected), width(&ours));
                let sum = |t: &Tensor| t.sum_all().unwrap().to_scalar::<f32>().unwrap();
                if (sum(&intersected.lower) - sum(&ours.lower)).abs() > 1e-3 {
                    crown_differs += 1;
                }
            }
        }
        // Intersecting with interval bounds is not monotone (a tighter intermediate bound can
        // flip an adaptive lower slope), so a network may lose a little; it must never lose much.
        assert!(
            widths.0 <= widths.1 * 1.01 + 1e-4,
            "{}: CROWN with intersected intermediate bounds is wider in total ({}) than plain ({})",
            fixture.case,
            widths.0,
            widths.1
        );
        total_widths = (total_widths.0 + widths.0, total_widths.1 + widths.1);
    }
    // Over every network it must pay for itself: that is why it is the default.
    assert!(
        total_widths.0 < total_widths.1,
        "CROWN with intersected intermediate bounds is not tighter in total: {total_widths:?}"
    );
    println!(
        "compared {compared} margin bounds; intersected CROWN differs from plain on {crown_differs} networks; total CROWN width intersected {:.4} vs plain {:.4}",
        total_widths.0, total_widths.1
    );
}

/// auto_LiRPA's α-CROWN (`CROWN-Optimized`) lower margin bounds on a `fixtures/bounds` case.
#[derive(Deserialize)]
struct AlphaFixture {
    case: String,
    iterations: usize,
    margin_lower: Vec<Vec<f32>>,
}

#[test]
fn alpha_crown_is_at_least_as_tight_as_auto_lirpa() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/alpha");
    let mut compared_cases = 0;
    let (mut ours_total, mut theirs_total) = (0f64, 0f64);
    for (fixture, weights) in fixtures() {
        let path = dir.join(format!("{}.json", fixture.case));
        // Not every case has one: auto_LiRPA's α-CROWN needs gigabytes on the larger nets.
        if !path.exists() {
            continue;
        }
        let alpha: AlphaFixture =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(alpha.case, fixture.case);
        let spec = NetSpec {
            input_shape: fixture.input_shape,
            layers: fixture.layers.clone(),
        };
        let net = Net::load(&spec, &weights).unwrap();
        let batch = fixture.inputs.len();
        let [c, h, w] = fixture.input_shape;
        let images =
            Tensor::from_vec(fixture.inputs.concat(), (batch, c, h, w), &Device::Cpu).unwrap();
        let labels = Tensor::new(fixture.labels.as_slice(), &Device::Cpu).unwrap();
        let margin = margin_spec(&labels, net.num_classes()).unwrap();
        let input = Interval::linf_ball(&images, fixture.eps).unwrap();
        let config = AlphaConfig {
            iterations: alpha.iterations,
            stop_when_positive: false,
            ..AlphaConfig::default()
        };
        let ours =
            alpha_crown_lower_bounds(&net, &input, &margin, &config, Normalization::Population)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
        let certified =
            |rows: &[Vec<f32>]| rows.iter().filter(|r| r.iter().all(|&v| v > 0.0)).count();
        assert!(
            certified(&ours) >= certified(&alpha.margin_lower),
            "{}: α-CROWN certifies {} of {batch}, auto_LiRPA {}",
            fixture.case,
            certified(&ours),
            certified(&alpha.margin_lower)
        );
        let sum = |rows: &[Vec<f32>]| rows.iter().flatten().map(|&v| f64::from(v)).sum::<f64>();
        let (mine, theirs) = (sum(&ours), sum(&alpha.margin_lower));
        let count = ours.iter().flatten().count() as f64;
        // Known gap (see README): with fixed intermediate bounds auto_LiRPA's bounds are tighter
        // in total on every fixture (it optimises the intermediate slopes too), so only the
        // certified count is held to theirs; the optimisation must still improve on CROWN's
        // bounds, which auto_LiRPA's CROWN fixture gives.
        println!(
            "{}: α-CROWN sum ours {mine:.4}, auto_LiRPA {theirs:.4}",
            fixture.case
        );
        let crown = sum(&fixture.bounds["crown"].margin_lower);
        assert!(
            mine >= crown - 1e-4 * count,
            "{}: α-CROWN lower bounds sum to {mine}, below CROWN's {crown}",
            fixture.case
        );
        // Optimising the intermediate bounds' slopes too (one run per neuron) closes the gap:
        // at least as tight as auto_LiRPA in total (up to rounding), and above CROWN.
        let deep = AlphaConfig {
            optimise_intermediate: true,
            ..config
        };
        let deeper =
            alpha_crown_lower_bounds(&net, &input, &margin, &deep, Normalization::Population)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
        println!(
            "{}: α-CROWN with intermediate slopes: sum {:.4}",
            fixture.case,
            sum(&deeper)
        );
        assert!(sum(&deeper) >= crown - 1e-4 * count);
        assert!(
            sum(&deeper) >= theirs - 1e-4 * count,
            "{}: with intermediate slopes α-CROWN sums to {}, auto_LiRPA {theirs}",
            fixture.case,
            sum(&deeper)
        );
        assert!(certified(&deeper) >= certified(&alpha.margin_lower));
        ours_total += mine;
        theirs_total += theirs;
        compared_cases += 1;
    }
    assert!(
        compared_cases >= 3,
        "only {compared_cases} α-CROWN fixtures"
    );
    println!(
        "α-CROWN lower bounds summed over every fixture: ours {ours_total:.4}, auto_LiRPA {theirs_total:.4}"
    );
}
