//! Certified accuracy over a range of radii, its area under the curve, and the unstable ReLUs.

use super::{EvalConfig, EvalError, EvalReport, evaluate};
use crate::bounds::{Interval, interval_trace};
use crate::model::{Net, Normalization};
use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

/// The radii of the certified-accuracy curve, as multiples of the target ε.
pub const RADIUS_FACTORS: [f64; 4] = [0.25, 0.5, 1.0, 2.0];

/// Certified accuracy at one radius.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RadiusPoint {
    /// ℓ∞ radius.
    pub eps: f64,
    /// Share of the samples certified at this radius.
    pub certified_accuracy: f64,
    /// Share PGD did not break at this radius.
    pub adversarial_accuracy: f64,
}

/// Results of the evaluation at the target ε and the curve around it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RadiusReport {
    /// The full evaluation at the target ε.
    pub at_eps: EvalReport,
    /// Certified accuracy at every [`RADIUS_FACTORS`] multiple of ε, increasing.
    pub curve: Vec<RadiusPoint>,
    /// Area under the certified-accuracy curve from radius 0 (natural accuracy) to the largest
    /// radius, by the trapezoid rule, divided by that radius: 1 for a network certified
    /// everywhere, its certified accuracy for a flat curve.
    pub certified_auc: f64,
    /// Mean number of ReLUs per sample whose input interval (IBP at the target ε) contains 0.
    pub unstable_relus: f64,
}

/// Evaluates `net` at every [`RADIUS_FACTORS`] multiple of `config.eps` with `config`'s attack
/// and cascade, and counts the unstable ReLUs at `config.eps`.
pub fn evaluate_radii(
    net: &Net,
    images: &Tensor,
    labels: &Tensor,
    config: &EvalConfig,
    mut on_progress: impl FnMut(&str, usize, usize),
) -> Result<RadiusReport, EvalError> {
    let mut curve = Vec::with_capacity(RADIUS_FACTORS.len());
    let mut at_eps = None;
    for factor in RADIUS_FACTORS {
        let radius_config = EvalConfig {
            eps: config.eps * factor,
            ..config.clone()
        };
        let label = format!("ε = {:.4}", radius_config.eps);
        let report = evaluate(net, images, labels, &radius_config, |done, total| {
            on_progress(&label, done, total)
        })?;
        curve.push(RadiusPoint {
            eps: radius_config.eps,
            certified_accuracy: report.certified_accuracy,
            adversarial_accuracy: report.adversarial_accuracy,
        });
        if factor == 1.0 {
            at_eps = Some(report);
        }
    }
    let at_eps = at_eps.ok_or_else(|| EvalError::InvalidInput("no radius equal to ε".into()))?;
    let certified_auc = curve_area(at_eps.natural_accuracy, &curve);
    let unstable_relus = mean_unstable_relus(net, images, config.eps, config.batch_size)?;
    Ok(RadiusReport {
        at_eps,
        curve,
        certified_auc,
        unstable_relus,
    })
}

/// Trapezoid area under `(0, natural), (eps_i, certified_i)…`, divided by the largest radius.
pub fn curve_area(natural: f64, curve: &[RadiusPoint]) -> f64 {
    let Some(last) = curve.last() else {
        return natural;
    };
    if last.eps <= 0.0 {
        return natural;
    }
    let mut area = 0.0;
    let (mut eps, mut value) = (0.0, natural);
    for point in curve {
        area += (point.eps - eps) * (value + point.certified_accuracy) / 2.0;
        (eps, value) = (point.eps, point.certified_accuracy);
    }
    area / last.eps
}

/// Mean over the samples of the ReLUs whose IBP input bounds on the ε-ball straddle 0.
pub fn mean_unstable_relus(
    net: &Net,
    images: &Tensor,
    eps: f64,
    batch_size: usize,
) -> Result<f64, EvalError> {
    let total = images.dim(0)?;
    let net = net.detached();
    let mut unstable = 0f64;
    for offset in (0..total).step_by(batch_size.max(1)) {
        let count = batch_size.max(1).min(total - offset);
        let input = Interval::linf_ball(&images.narrow(0, offset, count)?, eps)?;
        let trace = interval_trace(&net, &input, Normalization::Population)?;
        for (_, bounds) in trace.relu_inputs(&net)? {
            let straddles = bounds
                .lower
                .lt(0f32)?
                .mul(&bounds.upper.gt(0f32)?)?
                .to_dtype(DType::F32)?
                .sum_all()?
                .to_scalar::<f32>()?;
            unstable += f64::from(straddles);
        }
    }
    Ok(unstable / total.max(1) as f64)
}
