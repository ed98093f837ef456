//! One interface over the surrogate models: each is fitted to encoded configurations (the unit
//! cube, inactive parameters `None`) and their transformed costs, and predicts a mean and a
//! variance of the cost.

use super::forest::Forest;
use super::gp::{Gp, GpSettings, NUMBER_THETA, Prediction, ThetaStart, WIDE_THETA};
use super::rungs::RungModel;
use crate::space::{ParamKind, Space};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

/// Which surrogate model guides the search (a study that names none: see
/// [`SurrogateKind::for_space`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SurrogateKind {
    /// SMAC-style random forest.
    Rf,
    /// Gaussian process (egobox-gp).
    Gp,
}

impl SurrogateKind {
    /// The surrogate a study uses when none is chosen: the GP when at least two thirds of the
    /// searched parameters are numbers (every builtin space: 11 to 18 numbers and one
    /// categorical), the forest otherwise, whose splits handle many categoricals and
    /// conditions better than the GP's one-hot axes. On `bench_opt`'s three functions the GP's
    /// median regret after 50 evaluations is 400×, 15,000× and 3,400× below the forest's
    /// (Branin, Hartmann-6, the mixed space), and on `bench_fidelity` it is ahead of SMAC3 and
    /// Optuna at every cost where the forest trails Optuna's TPE (README, docs/optimiser.md).
    pub fn for_space(space: &Space) -> SurrogateKind {
        let searched = space.searched();
        let numbers = searched
            .iter()
            .filter(|p| matches!(p.kind, ParamKind::Float { .. } | ParamKind::Int { .. }))
            .count();
        if 3 * numbers >= 2 * searched.len() {
            SurrogateKind::Gp
        } else {
            SurrogateKind::Rf
        }
    }

    /// The share of asks that go to a random configuration with this surrogate: SMAC's 20 % for
    /// the forest, whose variance across trees under-explores; none for the GP, whose own
    /// variance explores (Optuna's GP sampler does the same). Measured with `bench_opt`, 20
    /// seeds × 50 evaluations: the GP's median regret on Hartmann-6 is 0.068 without random
    /// asks and 0.119 with 20 %, on Branin 2e-5 and 1e-4.
    pub fn random_interleave(self) -> f64 {
        match self {
            SurrogateKind::Rf => 0.2,
            SurrogateKind::Gp => 0.0,
        }
    }

    /// How this surrogate learns from trials told below the full budget by default: the GP
    /// from one corrected score per configuration, the forest with the budget as an input.
    /// Measured with `bench_fidelity --seeds 40` (Hyperband, `--no-default`, seeds 0–39 and
    /// 40–79; figures in docs/studies.md): corrected scores lowered the GP's median regret from
    /// cost 108 on, on Branin and Hartmann-6 and on both seed sets; the forest's moved both
    /// ways (Branin worse from cost 108 on, Hartmann-6 better or worse by seed set and cost).
    pub fn rung_model(self) -> RungModel {
        match self {
            SurrogateKind::Rf => RungModel::BudgetInput,
            SurrogateKind::Gp => RungModel::Corrected,
        }
    }
}

/// How the model treats configurations other workers are evaluating (pending trials), so that
/// concurrent proposals spread out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Fantasy {
    /// Constant liar (CL-min): pending configurations join the fit with the best cost so far.
    ConstantLiar,
    /// Kriging believer: the model is fitted to finished trials only, then conditioned on its
    /// own predicted mean at each pending configuration (the GP at fixed θ, no refit).
    #[default]
    KrigingBeliever,
}

/// The last GP fit of each model an optimiser fits (slot 0 the cost's, slot `1 + k`
/// constraint `k`'s), so that the next ask's likelihood search starts from its θ: unchanged
/// data reuses θ as it is, grown data runs one short local search from it, and a fit whose data
/// has grown by a quarter since its last full multistart search runs a full one again.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FitCache {
    entries: Vec<CachedFit>,
}

#[derive(Debug, Clone, PartialEq)]
struct CachedFit {
    slot: usize,
    /// Hash of the points and values fitted.
    data: u64,
    theta: Vec<f64>,
    /// How many points the last full (cold) search saw.
    cold_points: usize,
}

/// A warm-started fit runs a full search again once its data has grown by this factor since the
/// last full one (so θ cannot stay in a poor local optimum of the likelihood for long).
const COLD_REFIT_GROWTH: f64 = 1.25;

impl FitCache {
    /// How slot `slot`'s next fit to `points` points with data hash `data` and `dimension`
    /// inputs should start, and the point count of its last full search.
    fn start(
        &self,
        slot: usize,
        data: u64,
        dimension: usize,
        points: usize,
    ) -> (ThetaStart<'_>, usize) {
        match self.entries.iter().find(|e| e.slot == slot) {
            Some(entry) if entry.theta.len() == dimension && entry.data == data => {
                (ThetaStart::Fixed(&entry.theta), entry.cold_points)
            }
            Some(entry)
                if entry.theta.len() == dimension
                    && (points as f64) < entry.cold_points as f64 * COLD_REFIT_GROWTH =>
            {
                (ThetaStart::Warm(&entry.theta), entry.cold_points)
            }
            _ => (ThetaStart::Cold, points),
        }
    }

    fn store(&mut self, entry: CachedFit) {
        self.entries.retain(|e| e.slot != entry.slot);
        self.entries.push(entry);
    }

    /// The θ last fitted in slot `slot`, if any.
    pub fn theta(&self, slot: usize) -> Option<&[f64]> {
        self.entries
            .iter()
            .find(|e| e.slot == slot)
            .map(|e| e.theta.as_slice())
    }
}

/// FNV-1a over the bits of a data set, so a cache entry knows whether its data changed.
fn data_hash(x: &[Vec<f64>], y: &[f64]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325_u64;
    for value in x.iter().flatten().chain(y) {
        for byte in value.to_bits().to_le_bytes() {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash ^ x.len() as u64
}

/// A model of the cost over encoded configurations (shared by the threads that score a batch).
pub trait Surrogate: Send + Sync {
    /// Predictive mean and variance of the cost at each encoded configuration.
    fn predict(&self, points: &[Vec<Option<f64>>]) -> Vec<(f64, f64)>;

    /// Predictive mean and variance at one encoded configuration with their gradients along
    /// each axis of the unit cube (zero along categoricals), if the model is differentiable.
    fn predict_with_gradient(&self, _point: &[Option<f64>]) -> Option<Prediction> {
        None
    }

    /// The model conditioned on extra points with the given values, without refitting its
    /// hyperparameters, where the model can do that (the GP); `Err` gives it back unchanged.
    fn condition(
        self: Box<Self>,
        _points: &[Vec<Option<f64>>],
        _values: &[f64],
    ) -> Result<Box<dyn Surrogate>, Box<dyn Surrogate>>;
}

/// What each axis of a space's unit cube is, so a surrogate can encode it its own way.
#[derive(Debug, Clone, PartialEq)]
pub struct Axes(Vec<Option<usize>>);

impl Axes {
    /// The axes of a space: `Some(choices)` for a categorical, `None` for a number.
    pub fn of(space: &Space) -> Axes {
        Axes(
            space
                .searched()
                .iter()
                .map(|p| match &p.kind {
                    ParamKind::Categorical { choices } => Some(choices.len()),
                    _ => None,
                })
                .collect(),
        )
    }

    /// The number of choices of axis `axis` if it is a categorical.
    pub fn choices(&self, axis: usize) -> Option<usize> {
        self.0.get(axis).copied().flatten()
    }

    /// These axes and one more number, last: the budget an observation was made at (see
    /// [`AtBudget`]).
    pub fn with_budget(&self) -> Axes {
        let mut axes = self.0.clone();
        axes.push(None);
        Axes(axes)
    }

    /// Forest inputs: inactive coordinates become −1, outside the cube, so trees can split
    /// them off.
    fn forest_features(&self, point: &[Option<f64>]) -> Vec<f64> {
        point.iter().map(|v| v.unwrap_or(-1.0)).collect()
    }

    /// The GP's θ range for each of its inputs (see [`Axes::gp_features`]): numbers get
    /// [`NUMBER_THETA`], one-hot columns [`WIDE_THETA`].
    fn gp_theta_bounds(&self) -> Vec<(f64, f64)> {
        self.0
            .iter()
            .flat_map(|axis| match axis {
                None => vec![NUMBER_THETA],
                Some(choices) => vec![WIDE_THETA; *choices],
            })
            .collect()
    }

    /// GP inputs: numbers as they are (inactive at the centre), categoricals one-hot (inactive
    /// all zeros), so that no false order is imposed on the choices.
    fn gp_features(&self, point: &[Option<f64>]) -> Vec<f64> {
        let mut features = Vec::with_capacity(point.len());
        for (axis, value) in self.0.iter().zip(point) {
            match axis {
                None => features.push(value.unwrap_or(0.5)),
                Some(choices) => {
                    let hot = value.map(|u| ((u * *choices as f64) as usize).min(choices - 1));
                    features.extend((0..*choices).map(|k| f64::from(u8::from(hot == Some(k)))));
                }
            }
        }
        features
    }
}

struct ForestSurrogate {
    forest: Forest,
    axes: Axes,
}

impl Surrogate for ForestSurrogate {
    fn predict(&self, points: &[Vec<Option<f64>>]) -> Vec<(f64, f64)> {
        points
            .iter()
            .map(|p| self.forest.predict(&self.axes.forest_features(p)))
            .collect()
    }

    fn condition(
        self: Box<Self>,
        _points: &[Vec<Option<f64>>],
        _values: &[f64],
    ) -> Result<Box<dyn Surrogate>, Box<dyn Surrogate>> {
        Err(self)
    }
}

struct GpSurrogate {
    gp: Gp,
    axes: Axes,
}

impl Surrogate for GpSurrogate {
    fn predict(&self, points: &[Vec<Option<f64>>]) -> Vec<(f64, f64)> {
        let features: Vec<Vec<f64>> = points.iter().map(|p| self.axes.gp_features(p)).collect();
        // A prediction cannot fail on inputs of the fitted shape; should it, no improvement is
        // expected there rather than a made-up one.
        self.gp
            .predict_many(&features)
            .unwrap_or_else(|_| vec![(f64::INFINITY, 0.0); points.len()])
    }

    fn predict_with_gradient(&self, point: &[Option<f64>]) -> Option<Prediction> {
        let at = self
            .gp
            .predict_with_gradients(&self.axes.gp_features(point))
            .ok()?;
        // Back from features to axes: a number is one feature; a categorical's one-hot block
        // does not move with a continuous step.
        let (mut mean_gradient, mut variance_gradient) = (Vec::new(), Vec::new());
        let mut feature = 0;
        for axis in &self.axes.0 {
            match axis {
                None => {
                    mean_gradient.push(at.mean_gradient[feature]);
                    variance_gradient.push(at.variance_gradient[feature]);
                    feature += 1;
                }
                Some(choices) => {
                    mean_gradient.push(0.0);
                    variance_gradient.push(0.0);
                    feature += choices;
                }
            }
        }
        Some(Prediction {
            mean_gradient,
            variance_gradient,
            ..at
        })
    }

    fn condition(
        self: Box<Self>,
        points: &[Vec<Option<f64>>],
        values: &[f64],
    ) -> Result<Box<dyn Surrogate>, Box<dyn Surrogate>> {
        let features: Vec<Vec<f64>> = points.iter().map(|p| self.axes.gp_features(p)).collect();
        match self.gp.with_points(&features, values) {
            Ok(gp) => Ok(Box::new(GpSurrogate {
                gp,
                axes: self.axes.clone(),
            })),
            Err(_) => Err(self),
        }
    }
}

/// A model fitted with the budget (in [0, 1], 1 the full budget) as its last input,
/// predicting at one budget: the acquisition searches configurations alone and sees the
/// model at that budget, while the model learns from observations at every budget.
pub struct AtBudget {
    model: Box<dyn Surrogate>,
    budget: f64,
}

impl AtBudget {
    /// `model` (fitted on [`Axes::with_budget`] points) seen at `budget`.
    pub fn wrap(model: Box<dyn Surrogate>, budget: f64) -> Box<dyn Surrogate> {
        Box::new(AtBudget { model, budget })
    }

    /// `point` with the budget appended, as the wrapped model takes it.
    fn extended(&self, point: &[Option<f64>]) -> Vec<Option<f64>> {
        point.iter().copied().chain([Some(self.budget)]).collect()
    }

    fn extend(&self, points: &[Vec<Option<f64>>]) -> Vec<Vec<Option<f64>>> {
        points.iter().map(|p| self.extended(p)).collect()
    }
}

impl Surrogate for AtBudget {
    fn predict(&self, points: &[Vec<Option<f64>>]) -> Vec<(f64, f64)> {
        self.model.predict(&self.extend(points))
    }

    fn predict_with_gradient(&self, point: &[Option<f64>]) -> Option<Prediction> {
        let mut at = self.model.predict_with_gradient(&self.extended(point))?;
        at.mean_gradient.pop();
        at.variance_gradient.pop();
        Some(at)
    }

    fn condition(
        self: Box<Self>,
        points: &[Vec<Option<f64>>],
        values: &[f64],
    ) -> Result<Box<dyn Surrogate>, Box<dyn Surrogate>> {
        let extended = self.extend(points);
        let budget = self.budget;
        match self.model.condition(&extended, values) {
            Ok(model) => Ok(AtBudget::wrap(model, budget)),
            Err(model) => Err(AtBudget::wrap(model, budget)),
        }
    }
}

/// Most points a GP is fitted to: its likelihood costs grow with the square of the points (the
/// correlation matrix) at every one of its hundreds of evaluations (measured: 3.8 s at 200 points of
/// 15 features with four likelihood restarts; the fit now runs two), so longer histories are thinned.
const GP_MAX_POINTS: usize = 200;

/// Which trials the GP learns from: all of them up to [`GP_MAX_POINTS`], else the best half of
/// that many (where the search goes on) and an even random draw of the rest (the landscape).
fn gp_training_set(costs: &[f64], rng: &mut StdRng) -> Vec<usize> {
    let mut order: Vec<usize> = (0..costs.len()).collect();
    if costs.len() <= GP_MAX_POINTS {
        return order;
    }
    order.sort_by(|&a, &b| costs[a].total_cmp(&costs[b]));
    let mut rest = order.split_off(GP_MAX_POINTS / 2);
    rest.shuffle(rng);
    order.extend(rest.into_iter().take(GP_MAX_POINTS - GP_MAX_POINTS / 2));
    order
}

/// Fits the chosen surrogate; a GP that cannot be fitted is reported so the caller can fall back.
/// A GP's likelihood search starts from `cache`'s entry in `slot` (and leaves its θ there).
#[allow(clippy::too_many_arguments)]
pub fn fit(
    kind: SurrogateKind,
    gp: GpSettings,
    axes: &Axes,
    points: &[Vec<Option<f64>>],
    costs: &[f64],
    rng: &mut StdRng,
    cache: &mut FitCache,
    slot: usize,
) -> Result<Box<dyn Surrogate>, egobox_gp::GpError> {
    match kind {
        SurrogateKind::Rf => {
            let x: Vec<Vec<f64>> = points.iter().map(|p| axes.forest_features(p)).collect();
            Ok(Box::new(ForestSurrogate {
                forest: Forest::fit(&x, costs, rng),
                axes: axes.clone(),
            }))
        }
        SurrogateKind::Gp => {
            let kept = gp_training_set(costs, rng);
            let x: Vec<Vec<f64>> = kept.iter().map(|&i| axes.gp_features(&points[i])).collect();
            let y: Vec<f64> = kept.iter().map(|&i| costs[i]).collect();
            let data = data_hash(&x, &y);
            let dimension = x.first().map_or(0, Vec::len);
            let (start, cold_points) = cache.start(slot, data, dimension, x.len());
            let gp = Gp::fit_from(&x, &y, gp, &axes.gp_theta_bounds(), start)?;
            cache.store(CachedFit {
                slot,
                data,
                theta: gp.theta(),
                cold_points,
            });
            Ok(Box::new(GpSurrogate {
                gp,
                axes: axes.clone(),
            }))
        }
    }
}

/// [`fit`] (into cache slot `slot`) to the finished trials `(points, costs)` and the
/// configurations still `pending`, which join the model as `fantasy` says; with the best value
/// the model now believes of a pending configuration (the kriging believer's fantasies count as
/// observations, so one better than every trial lowers the incumbent and EI at it vanishes).
#[allow(clippy::too_many_arguments)]
pub fn fit_with_pending(
    kind: SurrogateKind,
    gp: GpSettings,
    axes: &Axes,
    (points, costs): (&[Vec<Option<f64>>], &[f64]),
    (pending, fantasy): (&[Vec<Option<f64>>], Fantasy),
    rng: &mut StdRng,
    cache: &mut FitCache,
    slot: usize,
) -> Result<(Box<dyn Surrogate>, Option<f64>), egobox_gp::GpError> {
    let joined = |values: Vec<f64>| -> (Vec<Vec<Option<f64>>>, Vec<f64>) {
        let x = points.iter().chain(pending).cloned().collect();
        let y = costs.iter().copied().chain(values).collect();
        (x, y)
    };
    if pending.is_empty() {
        return Ok((fit(kind, gp, axes, points, costs, rng, cache, slot)?, None));
    }
    match fantasy {
        Fantasy::ConstantLiar => {
            let lie = costs.iter().copied().fold(f64::INFINITY, f64::min);
            let (x, y) = joined(vec![lie; pending.len()]);
            Ok((fit(kind, gp, axes, &x, &y, rng, cache, slot)?, None))
        }
        Fantasy::KrigingBeliever => {
            let model = fit(kind, gp, axes, points, costs, rng, cache, slot)?;
            // Conditioning on a value equal to the posterior mean leaves the mean elsewhere
            // unchanged, so one batch of predictions gives every pending point's belief.
            let beliefs: Vec<f64> = model.predict(pending).into_iter().map(|(m, _)| m).collect();
            let best = beliefs.iter().copied().fold(f64::INFINITY, f64::min);
            let model = match model.condition(pending, &beliefs) {
                Ok(model) => model,
                // A model that cannot be conditioned is refitted with the beliefs as data.
                Err(_) => {
                    let (x, y) = joined(beliefs);
                    fit(kind, gp, axes, &x, &y, rng, cache, slot)?
                }
            };
            Ok((model, best.is_finite().then_some(best)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::space::BUILTIN_METHODS;

    #[test]
    fn the_gp_models_mostly_numeric_spaces_and_the_forest_the_rest() {
        for method in BUILTIN_METHODS {
            let space = Space::builtin(method).unwrap();
            assert_eq!(
                SurrogateKind::for_space(&space),
                SurrogateKind::Gp,
                "{method}"
            );
        }
        // Two numbers of three searched parameters: still the GP; constants are not searched.
        let two_of_three = "hyperparameters:
  - {name: a, type: float, lower: 0.0, upper: 1.0, default: 0.5}
  - {name: b, type: int, lower: 1, upper: 9, default: 3}
  - {name: c, type: categorical, choices: [x, y], default: x}
  - {name: d, type: constant, value: 3}
";
        let space = Space::from_yaml(two_of_three, "test").unwrap();
        assert_eq!(SurrogateKind::for_space(&space), SurrogateKind::Gp);
        let one_of_three = "hyperparameters:
  - {name: a, type: float, lower: 0.0, upper: 1.0, default: 0.5}
  - {name: c, type: categorical, choices: [x, y], default: x}
  - {name: e, type: categorical, choices: [u, v, w], default: u}
";
        let space = Space::from_yaml(one_of_three, "test").unwrap();
        assert_eq!(SurrogateKind::for_space(&space), SurrogateKind::Rf);
    }
}
