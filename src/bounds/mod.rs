//! Sound bound propagation (IBP, CROWN-IBP, CROWN, α-CROWN, ReLU-split sub-domains) over a `model::Net` for margin specifications.
//!
//! Every function here returns bounds that contain the network's values at every point of the
//! input box (up to float rounding); IBP and CROWN-IBP are built from candle ops and so are
//! differentiable for certified training.

mod alpha;
mod interval;
mod linear;
mod split;

pub use alpha::{AlphaConfig, alpha_crown_lower_bounds};
pub use interval::{IntervalTrace, interval_spec_bounds, interval_trace, propagate_layer};
pub use split::{DomainReluBounds, ReluSplit, Subdomain, SubdomainBound, bound_subdomains};

use crate::model::{ModelError, Net, Normalization};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

/// Element-wise lower and upper bounds of a batch of activations.
#[derive(Debug, Clone)]
pub struct Interval {
    /// Lower bounds, same shape as the activations.
    pub lower: Tensor,
    /// Upper bounds, same shape as the activations.
    pub upper: Tensor,
}

impl Interval {
    /// The ℓ∞ ball of radius `eps` around `inputs`, clipped to the data range [0, 1].
    pub fn linf_ball(inputs: &Tensor, eps: f64) -> Result<Interval, BoundsError> {
        Interval::linf_ball_within(inputs, eps, 0.0, 1.0)
    }

    /// The ℓ∞ ball of radius `eps` around `inputs`, clipped to `[min, max]`.
    pub fn linf_ball_within(
        inputs: &Tensor,
        eps: f64,
        min: f64,
        max: f64,
    ) -> Result<Interval, BoundsError> {
        if !eps.is_finite() || eps < 0.0 {
            return Err(BoundsError::InvalidEpsilon(eps));
        }
        Ok(Interval {
            lower: (inputs - eps)?.clamp(min, max)?,
            upper: (inputs + eps)?.clamp(min, max)?,
        })
    }
}

/// Which bound propagation method to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BoundMethod {
    /// Interval bound propagation: cheapest, loosest.
    Ibp,
    /// IBP for intermediate ReLU bounds, CROWN back-substitution for the final specification.
    CrownIbp,
    /// CROWN for every intermediate bound and the final specification.
    Crown,
    /// CROWN with the final bound's lower ReLU slopes optimised per sample ([`AlphaConfig`]'s
    /// defaults): tightest, costliest.
    AlphaCrown,
}

impl BoundMethod {
    /// Every method, cheapest first (the order of the full certification cascade).
    pub const ALL: [BoundMethod; 4] = [
        BoundMethod::Ibp,
        BoundMethod::CrownIbp,
        BoundMethod::Crown,
        BoundMethod::AlphaCrown,
    ];

    /// The cascade studies validate trials with: every method but α-CROWN, cheapest first.
    pub const FAST: [BoundMethod; 3] =
        [BoundMethod::Ibp, BoundMethod::CrownIbp, BoundMethod::Crown];

    /// The method's command-line name (`ibp`, `crown-ibp`, `crown`, `alpha-crown`).
    pub fn name(&self) -> &'static str {
        match self {
            BoundMethod::Ibp => "ibp",
            BoundMethod::CrownIbp => "crown-ibp",
            BoundMethod::Crown => "crown",
            BoundMethod::AlphaCrown => "alpha-crown",
        }
    }

    /// Whether the method runs one backward pass per intermediate neuron (full CROWN and
    /// α-CROWN), so its memory grows with batch × neurons.
    pub fn is_per_neuron(&self) -> bool {
        matches!(self, BoundMethod::Crown | BoundMethod::AlphaCrown)
    }
}

impl std::fmt::Display for BoundMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for BoundMethod {
    type Err = BoundsError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().replace('_', "-").as_str() {
            "ibp" => Ok(BoundMethod::Ibp),
            "crown-ibp" => Ok(BoundMethod::CrownIbp),
            "crown" => Ok(BoundMethod::Crown),
            "alpha-crown" | "α-crown" => Ok(BoundMethod::AlphaCrown),
            _ => Err(BoundsError::UnknownMethod(s.to_string())),
        }
    }
}

/// What can go wrong while computing bounds.
#[derive(Debug, thiserror::Error)]
pub enum BoundsError {
    /// ε must be a finite non-negative number.
    #[error("invalid perturbation radius ε = {0}: it must be finite and ≥ 0")]
    InvalidEpsilon(f64),
    /// The method name is not one of ours.
    #[error("unknown bound method `{0}` (known: ibp, crown-ibp, crown, alpha-crown)")]
    UnknownMethod(String),
    /// A label is not a class of the network.
    #[error("label {label} is out of range for a network with {classes} classes")]
    LabelOutOfRange {
        /// The offending label.
        label: u32,
        /// Number of classes.
        classes: usize,
    },
    /// Internal: a ReLU was reached before its input bounds were computed.
    #[error("internal error: no pre-activation bounds for the ReLU at layer {layer}")]
    MissingReluBounds {
        /// The ReLU's layer index.
        layer: usize,
    },
    /// Internal: an interval trace was asked for an activation it does not hold.
    #[error("internal error: interval trace has {len} activations, asked for activation {index}")]
    TraceIndex {
        /// The activation asked for.
        index: usize,
        /// Activations held.
        len: usize,
    },
    /// Internal: an affine step was asked of a layer that is not affine.
    #[error("internal error: layer {layer} is not affine")]
    NotAffine {
        /// The layer's index.
        layer: usize,
    },
    /// The network itself failed (shape mismatch and the like).
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A tensor operation failed.
    #[error("tensor operation failed: {0}")]
    Tensor(#[from] candle_core::Error),
}

/// The margin specification `C` of shape `[B, K−1, K]`: for each sample with label `y`, rows
/// `e_y − e_j` for every `j ≠ y` in increasing `j`. A sample is certified when every row's
/// lower bound is positive.
pub fn margin_spec(labels: &Tensor, num_classes: usize) -> Result<Tensor, BoundsError> {
    let labels = labels.to_dtype(DType::U32)?.to_vec1::<u32>()?;
    let rows = num_classes.saturating_sub(1);
    let mut values = vec![0f32; labels.len() * rows * num_classes];
    for (b, &label) in labels.iter().enumerate() {
        if label as usize >= num_classes {
            return Err(BoundsError::LabelOutOfRange {
                label,
                classes: num_classes,
            });
        }
        for row in 0..rows {
            let base = (b * rows + row) * num_classes;
            values[base + label as usize] = 1.0;
            values[base + margin_row_class(label, row)] = -1.0;
        }
    }
    Ok(Tensor::from_vec(
        values,
        (labels.len(), rows, num_classes),
        &Device::Cpu,
    )?)
}

/// Bounds of `spec · logits` (spec `[B, S, K]`) over the input box by the chosen method.
///
/// `normalization` selects BatchNorm statistics (population at evaluation, the clean batch's
/// during training). The lower bounds are what certification and robust losses use.
pub fn spec_bounds(
    net: &Net,
    input: &Interval,
    spec: &Tensor,
    method: BoundMethod,
    normalization: Normalization<'_>,
) -> Result<Interval, BoundsError> {
    if method == BoundMethod::AlphaCrown {
        let specs = spec.dim(1)?;
        let both = Tensor::cat(&[spec, &spec.neg()?], 1)?;
        let config = AlphaConfig {
            stop_when_positive: false,
            ..AlphaConfig::default()
        };
        let lower_both = alpha_crown_lower_bounds(net, input, &both, &config, normalization)?;
        return Ok(Interval {
            lower: lower_both.narrow(1, 0, specs)?,
            upper: lower_both.narrow(1, specs, specs)?.neg()?,
        });
    }
    match relu_bounds_for(net, input, method, normalization)? {
        Err(trace) => interval_spec_bounds(net, &trace, spec),
        Ok(relu_bounds) => {
            let end = net.layers().len();
            linear::backward_bounds(net, end, spec, input, &relu_bounds, normalization)
        }
    }
}

/// How CROWN forms the bounds on each ReLU's input that it back-substitutes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrownIntermediate {
    /// CROWN's bound intersected with the interval image of the earlier refined bounds: what
    /// [`BoundMethod::Crown`] uses (tighter on most margins, never unsound; not monotone, so a
    /// few margins come out looser than plain CROWN's).
    Intersected,
    /// Every bound CROWN's own, as auto_LiRPA computes CROWN with sparse intermediate bounds
    /// off: for checking our numbers against auto_LiRPA's.
    Plain,
}

/// Bounds of `spec · logits` by CROWN with intermediate bounds formed as `intermediate` says.
pub fn crown_spec_bounds(
    net: &Net,
    input: &Interval,
    spec: &Tensor,
    intermediate: CrownIntermediate,
    normalization: Normalization<'_>,
) -> Result<Interval, BoundsError> {
    let end = net.layers().len();
    let relu_bounds = linear::crown_relu_bounds(net, input, normalization, end, intermediate)?;
    linear::backward_bounds(net, end, spec, input, &relu_bounds, normalization)
}

/// Lower bounds only of `spec · logits`: half the backward work of [`spec_bounds`] for CROWN.
/// α-CROWN stops optimising a sample once all its rows are positive (enough to certify it).
pub fn spec_lower_bounds(
    net: &Net,
    input: &Interval,
    spec: &Tensor,
    method: BoundMethod,
    normalization: Normalization<'_>,
) -> Result<Tensor, BoundsError> {
    if method == BoundMethod::AlphaCrown {
        let config = AlphaConfig::default();
        return alpha_crown_lower_bounds(net, input, spec, &config, normalization);
    }
    match relu_bounds_for(net, input, method, normalization)? {
        Err(trace) => Ok(interval_spec_bounds(net, &trace, spec)?.lower),
        Ok(relu_bounds) => {
            let end = net.layers().len();
            linear::backward_lower_bound(net, end, spec.clone(), input, &relu_bounds, normalization)
        }
    }
}

/// The intermediate ReLU bounds a linear method back-substitutes through (`Ok`), or for IBP the
/// interval trace that already answers (`Err`).
fn relu_bounds_for(
    net: &Net,
    input: &Interval,
    method: BoundMethod,
    normalization: Normalization<'_>,
) -> Result<Result<linear::ReluBounds, IntervalTrace>, BoundsError> {
    Ok(match method {
        BoundMethod::Ibp => Err(interval_trace(net, input, normalization)?),
        BoundMethod::CrownIbp => {
            let trace = interval_trace(net, input, normalization)?;
            Ok(relu_bounds_from_trace(net, &trace)?)
        }
        BoundMethod::Crown | BoundMethod::AlphaCrown => {
            let end = net.layers().len();
            Ok(linear::crown_relu_bounds(
                net,
                input,
                normalization,
                end,
                CrownIntermediate::Intersected,
            )?)
        }
    })
}

/// CROWN-IBP lower bounds of `spec · logits` reusing an IBP trace already computed (training
/// mixes IBP and CROWN-IBP margins from one interval pass).
pub fn crown_ibp_lower_bounds_from_trace(
    net: &Net,
    trace: &IntervalTrace,
    spec: &Tensor,
    normalization: Normalization<'_>,
) -> Result<Tensor, BoundsError> {
    let relu_bounds = relu_bounds_from_trace(net, trace)?;
    let input = trace.activation(0)?;
    linear::backward_lower_bound(
        net,
        net.layers().len(),
        spec.clone(),
        input,
        &relu_bounds,
        normalization,
    )
}

/// The class margin row `row` compares the label against: rows list the other classes in
/// increasing order, skipping the label (the layout of [`margin_spec`] and every margin bound).
pub fn margin_row_class(label: u32, row: usize) -> usize {
    if (row as u32) < label { row } else { row + 1 }
}

/// Lower bounds on the margins `z_y − z_j` (`[B, K−1]`, `j ≠ y` in increasing order).
pub fn margin_lower_bounds(
    net: &Net,
    input: &Interval,
    labels: &Tensor,
    method: BoundMethod,
    normalization: Normalization<'_>,
) -> Result<Tensor, BoundsError> {
    let spec = margin_spec(labels, net.num_classes())?;
    spec_lower_bounds(net, input, &spec, method, normalization)
}

/// Logits for the robust cross-entropy: `0` at the label and `−m_j` elsewhere, from margin
/// lower bounds `m` (`[B, K−1]`); cross-entropy against the labels then bounds the worst case.
pub fn robust_logits(margin_lower: &Tensor, labels: &Tensor) -> Result<Tensor, BoundsError> {
    let (batch, rows) = margin_lower.dims2()?;
    let classes = rows + 1;
    let labels = labels.to_dtype(DType::U32)?.to_vec1::<u32>()?;
    // A constant 0/1 placement [B, K−1, K] moves margin row r to class r (or r + 1 past the
    // label); a matmul keeps this differentiable, which candle's scatter backward is not.
    let mut placement = vec![0f32; batch * rows * classes];
    for (b, &label) in labels.iter().enumerate() {
        for row in 0..rows {
            placement[(b * rows + row) * classes + margin_row_class(label, row)] = 1.0;
        }
    }
    let placement = Tensor::from_vec(placement, (batch, rows, classes), &Device::Cpu)?;
    Ok(margin_lower
        .neg()?
        .unsqueeze(1)?
        .matmul(&placement)?
        .squeeze(1)?)
}

fn relu_bounds_from_trace(
    net: &Net,
    trace: &IntervalTrace,
) -> Result<linear::ReluBounds, BoundsError> {
    let mut bounds = vec![None; net.layers().len()];
    for (index, interval) in trace.relu_inputs(net)? {
        bounds[index] = Some(interval.clone());
    }
    Ok(bounds)
}
