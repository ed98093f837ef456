//! Bounds of ReLU-split sub-domains, the bounding step of branch and bound.
//!
//! A sub-domain is the input box restricted to the points where some ReLU pre-activations have a
//! fixed sign. A split neuron's pre-activation bound is clamped at 0 (`l ← max(l, 0)` when it is
//! fixed active, `u ← min(u, 0)` when inactive), so its relaxation becomes exact; the ReLU
//! layers after the newest split get their CROWN bounds recomputed through the clamped ones and
//! intersected with the parent's (both are sound on the sub-domain, which lies inside the
//! parent). The final bound is α-CROWN through those bounds. Every step holds for every point of
//! the sub-domain, so a positive bound proves the property there; a sub-domain whose bounds
//! cross (`l > u`) holds no point at all.

use super::alpha::alpha_lower_bounds_within;
use super::interval::propagate_layer;
use super::linear::{
    ReluBounds, backward_lower_bound_recorded, crown_relu_bounds, interval_is_exact, refine,
};
use super::{AlphaConfig, BoundsError, CrownIntermediate, Interval};
use crate::model::{Layer, Net, Normalization};
use candle_core::{Device, Tensor};

/// One branching decision: the pre-activation of `neuron` (flat index within its layer) at the
/// ReLU layer `layer` is fixed `≥ 0` (`active`) or `≤ 0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReluSplit {
    /// Layer index of the ReLU in the network.
    pub layer: usize,
    /// Flat index of the neuron within one sample's activation.
    pub neuron: usize,
    /// Fixed active (`z ≥ 0`) or inactive (`z ≤ 0`).
    pub active: bool,
}

/// Pre-activation bounds of every ReLU of one sub-domain: per layer, `Some((lower, upper))`
/// (flat) at ReLU layers.
#[derive(Debug, Clone, PartialEq)]
pub struct DomainReluBounds {
    /// Per layer index, the flat lower and upper bounds at ReLU layers.
    pub layers: Vec<Option<(Vec<f32>, Vec<f32>)>>,
}

impl DomainReluBounds {
    /// The unstable neurons (`l < 0 < u`) as `(layer, neuron)` pairs.
    pub fn unstable(&self) -> Vec<(usize, usize)> {
        let mut found = Vec::new();
        for (layer, bounds) in self.layers.iter().enumerate() {
            if let Some((lower, upper)) = bounds {
                for (neuron, (&l, &u)) in lower.iter().zip(upper).enumerate() {
                    if l < 0.0 && u > 0.0 {
                        found.push((layer, neuron));
                    }
                }
            }
        }
        found
    }
}

/// A sub-domain to bound: its parent's ReLU bounds (`None` for the whole box) and every split
/// that defines it, newest last.
#[derive(Debug, Clone, Copy)]
pub struct Subdomain<'a> {
    /// Bounds of the parent sub-domain, valid on this one.
    pub parent: Option<&'a DomainReluBounds>,
    /// The splits that define the sub-domain.
    pub splits: &'a [ReluSplit],
}

/// What bounding one sub-domain found.
#[derive(Debug, Clone)]
pub struct SubdomainBound {
    /// False when the split constraints contradict each other: the sub-domain is empty.
    pub feasible: bool,
    /// Lower bound of every specification row over the sub-domain.
    pub lower: Vec<f32>,
    /// The sub-domain's ReLU pre-activation bounds (its children's parent bounds).
    pub relu_bounds: DomainReluBounds,
    /// The unstable neuron whose split promises the largest gain (BaBSR-style score), if any.
    pub branch: Option<(usize, usize)>,
    /// Flat input point of the box minimising the linear bound of the lowest row: a candidate
    /// counterexample (it may lie outside the sub-domain, never outside the box).
    pub candidate: Vec<f32>,
}

/// Bounds of `spec · logits` (spec `[1, S, K]`, one sample) over each sub-domain of the box
/// `input` (batch 1), all sub-domains in one batch. `open_rows[d][s]` says whether row `s` still
/// needs proving in sub-domain `d` (branching scores weigh only those rows). `net` must be
/// detached; BatchNorm uses population statistics.
pub fn bound_subdomains(
    net: &Net,
    input: &Interval,
    spec: &Tensor,
    domains: &[Subdomain<'_>],
    open_rows: &[Vec<bool>],
    alpha: &AlphaConfig,
) -> Result<Vec<SubdomainBound>, BoundsError> {
    let normalization = Normalization::Population;
    let count = domains.len();
    if count == 0 {
        return Ok(Vec::new());
    }
    let repeat = |t: &Tensor| -> Result<Tensor, BoundsError> {
        let mut dims = t.dims().to_vec();
        dims[0] = count;
        Ok(t.broadcast_as(dims)?.contiguous()?)
    };
    let input = Interval {
        lower: repeat(&input.lower)?,
        upper: repeat(&input.upper)?,
    };
    let spec = repeat(spec)?;
    let (relu_bounds, feasible) = split_relu_bounds(net, &input, domains, normalization)?;
    let end = net.layers().len();
    let alpha_lower =
        alpha_lower_bounds_within(net, &input, &spec, &relu_bounds, alpha, normalization)?
            .to_vec2::<f32>()?;
    let recorded =
        backward_lower_bound_recorded(net, end, spec.clone(), &input, &relu_bounds, normalization)?;
    let crown_lower = recorded.lower.to_vec2::<f32>()?;
    let host = host_bounds(net, &relu_bounds, count)?;
    let input_coefficients = recorded
        .input_coefficients
        .flatten_from(2)?
        .to_vec3::<f32>()?;
    let input_lower = input.lower.flatten_from(1)?.to_vec2::<f32>()?;
    let input_upper = input.upper.flatten_from(1)?.to_vec2::<f32>()?;
    let relu_coefficients: Vec<Option<Vec<Vec<Vec<f32>>>>> = recorded
        .relu_coefficients
        .iter()
        .map(|c| match c {
            Some(c) => c.flatten_from(2)?.to_vec3::<f32>().map(Some),
            None => Ok(None),
        })
        .collect::<Result<_, candle_core::Error>>()?;
    let mut results = Vec::with_capacity(count);
    for (d, domain_bounds) in host.into_iter().enumerate() {
        let lower: Vec<f32> = alpha_lower[d]
            .iter()
            .zip(&crown_lower[d])
            .map(|(&a, &c)| a.max(c))
            .collect();
        let open = &open_rows[d];
        let weighed: Vec<usize> = (0..lower.len())
            .filter(|&s| open.get(s).copied().unwrap_or(true) && lower[s] <= 0.0)
            .collect();
        let branch = branching_choice(&domain_bounds, &relu_coefficients, d, &weighed);
        let worst = weighed
            .iter()
            .copied()
            .min_by(|&a, &b| lower[a].total_cmp(&lower[b]))
            .unwrap_or(0);
        // The box corner minimising A·x: the lower end where A > 0, the upper end where A < 0.
        let candidate = input_coefficients[d][worst]
            .iter()
            .zip(input_lower[d].iter().zip(&input_upper[d]))
            .map(|(&a, (&l, &u))| {
                if a > 0.0 {
                    l
                } else if a < 0.0 {
                    u
                } else {
                    0.5 * (l + u)
                }
            })
            .collect();
        results.push(SubdomainBound {
            feasible: feasible[d],
            lower,
            relu_bounds: domain_bounds,
            branch,
            candidate,
        });
    }
    Ok(results)
}

/// The unstable neuron with the largest BaBSR-style score: the bound lost to its upper
/// relaxation's intercept, `Σ_rows max(−a, 0) · u·(−l)/(u − l)` with `a` the row's coefficient
/// on the neuron's output; ties at zero fall back to `Σ_rows |a| · min(u, −l)`.
fn branching_choice(
    bounds: &DomainReluBounds,
    coefficients: &[Option<Vec<Vec<Vec<f32>>>>],
    domain: usize,
    rows: &[usize],
) -> Option<(usize, usize)> {
    let mut best: Option<((f32, f32), (usize, usize))> = None;
    for (layer, neuron) in bounds.unstable() {
        let Some((lower, upper)) = &bounds.layers[layer] else {
            continue;
        };
        let (l, u) = (lower[neuron], upper[neuron]);
        let intercept = u * (-l) / (u - l);
        let mut primary = 0.0f32;
        let mut fallback = 0.0f32;
        if let Some(Some(per_row)) = coefficients.get(layer) {
            for &row in rows {
                let a = per_row[domain][row][neuron];
                primary += (-a).max(0.0) * intercept;
                fallback += a.abs() * u.min(-l);
            }
        }
        let score = (primary, fallback);
        let better = match &best {
            None => true,
            Some((kept, _)) => score.0 > kept.0 || (score.0 == kept.0 && score.1 > kept.1),
        };
        if better {
            best = Some((score, (layer, neuron)));
        }
    }
    best.map(|(_, choice)| choice)
}

/// ReLU bounds of every sub-domain as one batch, and whether each sub-domain is feasible.
fn split_relu_bounds(
    net: &Net,
    input: &Interval,
    domains: &[Subdomain<'_>],
    normalization: Normalization<'_>,
) -> Result<(ReluBounds, Vec<bool>), BoundsError> {
    let layers = net.layers();
    let end = layers.len();
    let count = domains.len();
    let mut feasible = vec![true; count];
    if domains
        .iter()
        .all(|d| d.parent.is_none() && d.splits.is_empty())
    {
        let bounds = crown_relu_bounds(
            net,
            input,
            normalization,
            end,
            CrownIntermediate::Intersected,
        )?;
        return Ok((bounds, feasible));
    }
    // Layers up to the earliest newest split keep their parent's bounds (clamped).
    let recompute_after = domains
        .iter()
        .map(|d| d.splits.last().map_or(0, |s| s.layer))
        .min()
        .unwrap_or(0);
    let mut relu_bounds: ReluBounds = vec![None; end];
    let mut current = input.clone();
    let mut segment_start = 0;
    for index in 0..end {
        if !matches!(layers[index], Layer::Relu) {
            current = propagate_layer(net, index, &current, normalization)?;
            continue;
        }
        let mut lower = current.lower.flatten_from(1)?.to_vec2::<f32>()?;
        let mut upper = current.upper.flatten_from(1)?.to_vec2::<f32>()?;
        for (d, domain) in domains.iter().enumerate() {
            if let Some(parent) = domain.parent
                && let Some(Some((parent_lower, parent_upper))) = parent.layers.get(index)
            {
                intersect(&mut lower[d], &mut upper[d], parent_lower, parent_upper);
            }
            clamp_splits(&mut lower[d], &mut upper[d], index, domain.splits);
        }
        let shape = net.shapes()[index];
        let candidate = to_interval(&lower, &upper, shape.batch_dims(count))?;
        let refined = if index > recompute_after && !interval_is_exact(net, segment_start, index) {
            // Refinement only touches unstable neurons, so the clamps survive it.
            refine(
                net,
                index,
                &candidate,
                (input, &relu_bounds),
                normalization,
                CrownIntermediate::Intersected,
            )?
        } else {
            candidate
        };
        let refined_lower = refined.lower.flatten_from(1)?.to_vec2::<f32>()?;
        let refined_upper = refined.upper.flatten_from(1)?.to_vec2::<f32>()?;
        for d in 0..count {
            if refined_lower[d]
                .iter()
                .zip(&refined_upper[d])
                .any(|(l, u)| l > u)
            {
                feasible[d] = false;
            }
        }
        current = propagate_layer(net, index, &refined, normalization)?;
        relu_bounds[index] = Some(refined);
        segment_start = index + 1;
    }
    Ok((relu_bounds, feasible))
}

/// Narrows `[lower, upper]` to its intersection with `[other_lower, other_upper]`.
fn intersect(lower: &mut [f32], upper: &mut [f32], other_lower: &[f32], other_upper: &[f32]) {
    for (l, &o) in lower.iter_mut().zip(other_lower) {
        *l = l.max(o);
    }
    for (u, &o) in upper.iter_mut().zip(other_upper) {
        *u = u.min(o);
    }
}

/// Clamps the split neurons of ReLU layer `layer` at 0 on the side their split fixes.
fn clamp_splits(lower: &mut [f32], upper: &mut [f32], layer: usize, splits: &[ReluSplit]) {
    for split in splits.iter().filter(|s| s.layer == layer) {
        if split.active {
            lower[split.neuron] = lower[split.neuron].max(0.0);
        } else {
            upper[split.neuron] = upper[split.neuron].min(0.0);
        }
    }
}

fn to_interval(
    lower: &[Vec<f32>],
    upper: &[Vec<f32>],
    dims: Vec<usize>,
) -> Result<Interval, BoundsError> {
    Ok(Interval {
        lower: Tensor::from_vec(lower.concat(), dims.clone(), &Device::Cpu)?,
        upper: Tensor::from_vec(upper.concat(), dims, &Device::Cpu)?,
    })
}

/// Splits a batch of ReLU bounds into one host copy per sub-domain.
fn host_bounds(
    net: &Net,
    bounds: &ReluBounds,
    count: usize,
) -> Result<Vec<DomainReluBounds>, BoundsError> {
    let end = net.layers().len();
    let mut per_domain = vec![
        DomainReluBounds {
            layers: vec![None; end]
        };
        count
    ];
    for (index, interval) in bounds.iter().enumerate() {
        let Some(interval) = interval else { continue };
        let lower = interval.lower.flatten_from(1)?.to_vec2::<f32>()?;
        let upper = interval.upper.flatten_from(1)?.to_vec2::<f32>()?;
        for (d, (l, u)) in lower.into_iter().zip(upper).enumerate() {
            per_domain[d].layers[index] = Some((l, u));
        }
    }
    Ok(per_domain)
}
