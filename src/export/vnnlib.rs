//! VNN-LIB robustness properties: an ε-ball around an image and "some other class wins".

use std::fmt::Write as _;

/// The box `[max(0, x − ε), min(1, x + ε)]` around each pixel: the ε-ball clipped to the image
/// domain, in the network's raw `[0,1]` input units.
pub fn input_box(image: &[f32], eps: f64) -> Vec<(f64, f64)> {
    image
        .iter()
        .map(|&x| {
            let x = f64::from(x);
            ((x - eps).max(0.0), (x + eps).min(1.0))
        })
        .collect()
}

/// A VNN-LIB property in the VNN-COMP form: inputs `X_0 …` (the image flattened in
/// `C, H, W` order) inside the clipped ε-ball, and the *unsafe* outputs
/// `(or (and (>= Y_j Y_label)) …)` over every other class `j`. A verifier answers `unsat`
/// when the network is robust at this image (no other class reaches the label's logit), `sat`
/// with a counterexample otherwise.
pub fn vnnlib_property(image: &[f32], label: usize, num_classes: usize, eps: f64) -> String {
    let bounds = input_box(image, eps);
    let mut text = String::with_capacity(80 * bounds.len() + 40 * num_classes + 400);
    // Writing to a String cannot fail.
    let _ = writeln!(
        text,
        "; cthpo robustness property: label {label}, eps {eps} (l-infinity, pixel units),\n\
         ; input box = eps-ball clipped to [0, 1]; unsafe if another class scores >= the label.\n"
    );
    for i in 0..bounds.len() {
        let _ = writeln!(text, "(declare-const X_{i} Real)");
    }
    text.push('\n');
    for j in 0..num_classes {
        let _ = writeln!(text, "(declare-const Y_{j} Real)");
    }
    text.push_str("\n; input constraints\n");
    for (i, (lower, upper)) in bounds.iter().enumerate() {
        let (lower, upper) = (decimal(*lower), decimal(*upper));
        let _ = writeln!(text, "(assert (<= X_{i} {upper}))");
        let _ = writeln!(text, "(assert (>= X_{i} {lower}))");
    }
    text.push_str("\n; output constraints: some other class is at least the label\n(assert (or\n");
    for j in (0..num_classes).filter(|&j| j != label) {
        let _ = writeln!(text, "    (and (>= Y_{j} Y_{label}))");
    }
    text.push_str("))\n");
    text
}

/// `value` as a plain decimal with a point (`0.0`, `0.25`), never in exponent form, which
/// SMT-LIB's real literals do not allow.
fn decimal(value: f64) -> String {
    let text = value.to_string();
    if text.contains('.') {
        text
    } else {
        text + ".0"
    }
}
