//! A Gaussian-process surrogate on egobox-gp: constant mean, Matérn 5/2 or squared-exponential
//! correlation with one length scale per input, fitted by maximum likelihood.

use super::posterior::Posterior;
use egobox_gp::correlation_models::{CorrelationModel, Matern52Corr, SquaredExponentialCorr};
use egobox_gp::mean_models::ConstantMean;
use egobox_gp::{GaussianProcess, GpError, ThetaTuning};
use linfa::prelude::{Dataset, Fit};
use ndarray::{Array1, Array2, ArrayBase, Data, Ix1, Ix2};
use serde::{Deserialize, Serialize};

/// The GP's correlation function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kernel {
    /// Matérn 5/2 (the usual choice for hyperparameter responses: twice differentiable, not smoother).
    #[default]
    Matern52,
    /// Squared exponential (infinitely smooth).
    SquaredExponential,
}

/// Likelihood restarts: egobox's default is 10, but each restart costs a full optimisation and
/// two did as well as four on the benchmarks (Hartmann-6 median regret 0.016 against 0.068 over
/// 20 seeds, Branin and the mixed space unchanged), one per core.
const LIKELIHOOD_STARTS: usize = 2;
/// Likelihood evaluations of a warm-started fit (egobox's floor is 25; a cold start runs up to
/// ten per input from each of its starts).
const WARM_EVALUATIONS: usize = 25;
/// Diagonal jitter relative to the (normalised) signal variance, so near-duplicate points do not
/// make the correlation matrix singular; a larger one models noisy costs.
pub const DEFAULT_NUGGET: f64 = 1e-6;

/// How a GP is fitted: its correlation function and its nugget.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GpSettings {
    /// The correlation function.
    pub kernel: Kernel,
    /// Diagonal term added to the correlation matrix, relative to the signal variance (the
    /// noise the GP assumes).
    pub nugget: f64,
}

impl From<Kernel> for GpSettings {
    fn from(kernel: Kernel) -> GpSettings {
        GpSettings {
            kernel,
            nugget: DEFAULT_NUGGET,
        }
    }
}

/// egobox's default range of θ: what one-hot categorical inputs keep, since a choice that does
/// not matter needs a length scale far beyond the cube.
pub const WIDE_THETA: (f64, f64) = (1e-2, 10.0);

/// The range of θ for a number's input. The floor keeps the fit from explaining a few points by
/// a nearly flat surface, which would leave the acquisition exploiting one basin: measured with
/// `bench_opt --strategies gp_bo`, 20 seeds × 50 evaluations, it takes Hartmann-6's median regret
/// from 0.016 to 3e-4 (see docs/optimiser.md).
pub const NUMBER_THETA: (f64, f64) = (0.3, 30.0);

/// Matérn 5/2 exactly as egobox's [`Matern52Corr`] defines it (each input's distance scaled by θ
/// through the PLS weights), but summing only over the non-zero weights. egobox's loop visits
/// every (input, reduced dimension) pair, d² terms per pair of points where the full GP's
/// identity weights leave d; that loop was most of an ask's time (profiled with `perf` on
/// `bench_opt --latency --surrogate gp`: 62 % of samples, in the likelihood fit and the
/// acquisition search alike).
#[derive(Debug, Clone, Copy, Default)]
pub struct SparseMatern52;

impl std::fmt::Display for SparseMatern52 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Matern52")
    }
}

/// The Matérn 5/2 correlation `∏ₗ (1 + √5 uₗ + 5/3 uₗ²) · exp(−√5 Σₗ uₗ)` of the scaled
/// distances `uₗ = θₗ·|xₗ − cₗ|`, in the order given (the likelihood fit and our prediction path
/// share it, so their correlations agree bit for bit).
pub(super) fn matern52_of_scaled(scaled: impl Iterator<Item = f64>) -> f64 {
    let sqrt5 = 5f64.sqrt();
    let (mut product, mut sum) = (1.0, 0.0);
    for u in scaled {
        product *= 1.0 + sqrt5 * u + 5.0 / 3.0 * u * u;
        sum += u;
    }
    product * (-sqrt5 * sum).exp()
}

impl CorrelationModel<f64> for SparseMatern52 {
    fn rval_from_distances(
        &self,
        distances: &ArrayBase<impl Data<Elem = f64>, Ix2>,
        theta: &ArrayBase<impl Data<Elem = f64>, Ix1>,
        weights: &ArrayBase<impl Data<Elem = f64>, Ix2>,
    ) -> Array2<f64> {
        // Per input, the scales θₗ·|wⱼₗ| that are not zero (a zero one contributes a factor 1).
        let scales: Vec<Vec<f64>> = weights
            .rows()
            .into_iter()
            .map(|row| {
                row.iter()
                    .zip(theta.iter())
                    .map(|(w, t)| t * w.abs())
                    .filter(|s| *s != 0.0)
                    .collect()
            })
            .collect();
        let mut r = Array2::zeros((distances.nrows(), 1));
        for (out, row) in r.iter_mut().zip(distances.rows()) {
            *out = matern52_of_scaled(
                row.iter()
                    .zip(&scales)
                    .flat_map(|(d, input_scales)| input_scales.iter().map(move |s| s * d.abs())),
            );
        }
        r
    }

    fn jac(
        &self,
        x: &ArrayBase<impl Data<Elem = f64>, Ix1>,
        xtrain: &ArrayBase<impl Data<Elem = f64>, Ix2>,
        theta: &ArrayBase<impl Data<Elem = f64>, Ix1>,
        weights: &ArrayBase<impl Data<Elem = f64>, Ix2>,
    ) -> Array2<f64> {
        // One point at a time (gradients of the acquisition): egobox's own is fast enough.
        Matern52Corr().jac(x, xtrain, theta, weights)
    }

    fn rval_with_jac(
        &self,
        x: &ArrayBase<impl Data<Elem = f64>, Ix1>,
        xtrain: &ArrayBase<impl Data<Elem = f64>, Ix2>,
        theta: &ArrayBase<impl Data<Elem = f64>, Ix1>,
        weights: &ArrayBase<impl Data<Elem = f64>, Ix2>,
    ) -> (Array2<f64>, Array2<f64>) {
        Matern52Corr().rval_with_jac(x, xtrain, theta, weights)
    }

    fn theta_influence_factors(&self) -> (f64, f64) {
        CorrelationModel::<f64>::theta_influence_factors(&Matern52Corr())
    }
}

enum Fitted {
    Matern(GaussianProcess<f64, ConstantMean, SparseMatern52>),
    Squared(GaussianProcess<f64, ConstantMean, SquaredExponentialCorr>),
}

/// A predictive mean and variance with their gradients.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// Predictive mean.
    pub mean: f64,
    /// Predictive variance.
    pub variance: f64,
    /// Gradient of the mean along each input.
    pub mean_gradient: Vec<f64>,
    /// Gradient of the variance along each input.
    pub variance_gradient: Vec<f64>,
}

/// Where the likelihood fit starts its search for θ.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ThetaStart<'a> {
    /// From egobox's default θ and two Latin-hypercube points (a full multistart search).
    Cold,
    /// One local search from a previous fit's θ (its data grew by a few points, so its optimum
    /// moved little): a fraction of the cold fit's cost.
    Warm(&'a [f64]),
    /// No search: θ as given (the data it was fitted to has not changed).
    Fixed(&'a [f64]),
}

/// A fitted Gaussian process over feature vectors of equal length.
pub struct Gp {
    /// egobox's model: the likelihood fit and the predictive gradients.
    fitted: Fitted,
    /// Our own prediction path for the same fit (what every batch of predictions uses).
    posterior: Posterior,
    nugget: f64,
    dimension: usize,
}

impl Gp {
    /// Fits the GP to `(x, y)`; fails on empty or inconsistent data or a failed factorisation.
    pub fn fit(x: &[Vec<f64>], y: &[f64], kernel: Kernel) -> Result<Gp, GpError> {
        let dimension = x.first().map_or(0, Vec::len);
        Gp::fit_bounded(x, y, kernel, &vec![WIDE_THETA; dimension])
    }

    /// Fits the GP with bounds on each input's θ (the inverse squared length scale on the unit
    /// cube), one `(lower, upper)` per input column.
    pub fn fit_bounded(
        x: &[Vec<f64>],
        y: &[f64],
        kernel: Kernel,
        theta_bounds: &[(f64, f64)],
    ) -> Result<Gp, GpError> {
        Gp::fit_from(x, y, kernel.into(), theta_bounds, ThetaStart::Cold)
    }

    /// [`Gp::fit_bounded`] with the likelihood search started as `start` says.
    pub fn fit_from(
        x: &[Vec<f64>],
        y: &[f64],
        settings: GpSettings,
        theta_bounds: &[(f64, f64)],
        start: ThetaStart<'_>,
    ) -> Result<Gp, GpError> {
        let dimension = x.first().map_or(0, Vec::len);
        if x.is_empty() || dimension == 0 || x.len() != y.len() {
            return Err(GpError::InvalidValueError(format!(
                "{} points of dimension {dimension} for {} values",
                x.len(),
                y.len()
            )));
        }
        if theta_bounds.len() != dimension {
            return Err(GpError::InvalidValueError(format!(
                "{} length-scale bounds for {dimension} inputs",
                theta_bounds.len()
            )));
        }
        if let ThetaStart::Warm(theta) | ThetaStart::Fixed(theta) = start
            && theta.len() != dimension
        {
            return Err(GpError::InvalidValueError(format!(
                "a starting θ of {} values for {dimension} inputs",
                theta.len()
            )));
        }
        let records = to_matrix(x, dimension)?;
        let bounds = Array1::from_vec(theta_bounds.to_vec());
        let dataset = Dataset::new(records, Array1::from_vec(y.to_vec()));
        let fit = |start| FitSpec {
            dataset: &dataset,
            start,
            bounds: &bounds,
            nugget: settings.nugget,
        };
        let fitted = match settings.kernel {
            Kernel::Matern52 => Fitted::Matern(fit_with(SparseMatern52, fit(start))?),
            Kernel::SquaredExponential => {
                Fitted::Squared(fit_with(SquaredExponentialCorr(), fit(start))?)
            }
        };
        let theta = match &fitted {
            Fitted::Matern(gp) => gp.theta().to_vec(),
            Fitted::Squared(gp) => gp.theta().to_vec(),
        };
        let posterior = Posterior::new(
            settings.kernel,
            &theta,
            settings.nugget,
            (dataset.records(), dataset.targets()),
            None,
        )?;
        Ok(Gp {
            fitted,
            posterior,
            nugget: settings.nugget,
            dimension,
        })
    }

    /// The fitted θ, one per input (what a later fit can start from).
    pub fn theta(&self) -> Vec<f64> {
        match &self.fitted {
            Fitted::Matern(gp) => gp.theta().to_vec(),
            Fitted::Squared(gp) => gp.theta().to_vec(),
        }
    }

    /// egobox's reduced log-likelihood of the fit (larger is better; for comparing fits of the
    /// same data).
    pub fn likelihood(&self) -> f64 {
        match &self.fitted {
            Fitted::Matern(gp) => gp.likelihood(),
            Fitted::Squared(gp) => gp.likelihood(),
        }
    }

    /// The GP conditioned on further points at fixed θ and normalisation (an exact block
    /// update of its Cholesky factor, no refit): how fantasised observations join the model.
    pub fn with_points(&self, x: &[Vec<f64>], y: &[f64]) -> Result<Gp, GpError> {
        if x.len() != y.len() {
            return Err(GpError::InvalidValueError(format!(
                "{} points for {} values",
                x.len(),
                y.len()
            )));
        }
        let records = to_matrix(x, self.dimension)?;
        let values = Array1::from_vec(y.to_vec());
        let fitted = match &self.fitted {
            Fitted::Matern(gp) => Fitted::Matern(gp.clone().update(&records, &values)?),
            Fitted::Squared(gp) => Fitted::Squared(gp.clone().update(&records, &values)?),
        };
        let posterior = self
            .posterior
            .with_points(self.nugget, (&records, &values))?;
        Ok(Gp {
            fitted,
            posterior,
            nugget: self.nugget,
            dimension: self.dimension,
        })
    }

    /// Predictive means and variances at many points at once (our own prediction path, equal
    /// to egobox's).
    pub fn predict_many(&self, points: &[Vec<f64>]) -> Result<Vec<(f64, f64)>, GpError> {
        if points.is_empty() {
            return Ok(Vec::new());
        }
        Ok(self.posterior.predict(&to_matrix(points, self.dimension)?))
    }

    /// Predictive mean and variance at one point with their gradients along each feature.
    pub fn predict_with_gradients(&self, point: &[f64]) -> Result<Prediction, GpError> {
        let x = to_matrix(&[point.to_vec()], self.dimension)?;
        let ((mean, variance), (mean_gradient, variance_gradient)) = match &self.fitted {
            Fitted::Matern(gp) => (gp.predict_valvar(&x)?, gp.predict_valvar_gradients(&x)),
            Fitted::Squared(gp) => (gp.predict_valvar(&x)?, gp.predict_valvar_gradients(&x)),
        };
        Ok(Prediction {
            mean: mean[0],
            variance: variance[0],
            mean_gradient: mean_gradient.row(0).to_vec(),
            variance_gradient: variance_gradient.row(0).to_vec(),
        })
    }

    /// Predictive mean and variance at one point.
    pub fn predict(&self, point: &[f64]) -> Result<(f64, f64), GpError> {
        Ok(self.predict_many(&[point.to_vec()])?[0])
    }
}

/// What a likelihood fit needs besides the correlation function.
struct FitSpec<'a> {
    dataset: &'a Dataset<f64, f64, ndarray::Ix1>,
    start: ThetaStart<'a>,
    bounds: &'a Array1<(f64, f64)>,
    nugget: f64,
}

/// Maximum-likelihood fit of a constant-mean GP with correlation `corr`.
fn fit_with<Corr: CorrelationModel<f64>>(
    corr: Corr,
    spec: FitSpec<'_>,
) -> Result<GaussianProcess<f64, ConstantMean, Corr>, GpError> {
    let params = GaussianProcess::<f64, ConstantMean, Corr>::params(ConstantMean(), corr)
        .nugget(spec.nugget)
        .theta_bounds(spec.bounds.clone());
    match spec.start {
        ThetaStart::Cold => params.n_start(LIKELIHOOD_STARTS),
        ThetaStart::Warm(theta) => params
            .theta_init(Array1::from_vec(theta.to_vec()))
            .n_start(0)
            .max_eval(WARM_EVALUATIONS),
        ThetaStart::Fixed(theta) => {
            params.theta_tuning(ThetaTuning::Fixed(Array1::from_vec(theta.to_vec())))
        }
    }
    .fit(spec.dataset)
}

fn to_matrix(rows: &[Vec<f64>], dimension: usize) -> Result<Array2<f64>, GpError> {
    if let Some(bad) = rows.iter().find(|r| r.len() != dimension) {
        return Err(GpError::InvalidValueError(format!(
            "a point of dimension {} where {dimension} was expected",
            bad.len()
        )));
    }
    let flat: Vec<f64> = rows.iter().flatten().copied().collect();
    Array2::from_shape_vec((rows.len(), dimension), flat)
        .map_err(|e| GpError::InvalidValueError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    #[test]
    fn sparse_matern_equals_egobox_matern_for_any_weights() {
        let mut rng = StdRng::seed_from_u64(2);
        let (pairs, inputs) = (30, 5);
        let distances = Array2::from_shape_fn((pairs, inputs), |_| rng.random_range(-2.0..2.0));
        let theta = Array1::from_shape_fn(inputs, |_| rng.random_range(0.01..30.0));
        let identity = Array2::<f64>::eye(inputs);
        // PLS-like weights: dense, some negative, and a zero column.
        let mut dense = Array2::from_shape_fn((inputs, inputs), |_| rng.random_range(-1.0..1.0));
        dense.column_mut(2).fill(0.0);
        for weights in [identity, dense] {
            let ours = SparseMatern52.rval_from_distances(&distances, &theta, &weights);
            let theirs = Matern52Corr().rval_from_distances(&distances, &theta, &weights);
            for (a, b) in ours.iter().zip(&theirs) {
                assert!(
                    (a - b).abs() <= 1e-12 * b.abs().max(1e-300),
                    "{a} against {b}"
                );
            }
        }
    }

    /// egobox's own predictions of `gp`'s fit.
    fn egobox_predictions(gp: &Gp, points: &[Vec<f64>]) -> Vec<(f64, f64)> {
        let x = to_matrix(points, gp.dimension).unwrap();
        let (mean, variance) = match &gp.fitted {
            Fitted::Matern(model) => model.predict_valvar(&x).unwrap(),
            Fitted::Squared(model) => model.predict_valvar(&x).unwrap(),
        };
        mean.iter().copied().zip(variance.iter().copied()).collect()
    }

    fn random_points(rng: &mut StdRng, count: usize, dimension: usize) -> Vec<Vec<f64>> {
        (0..count)
            .map(|_| (0..dimension).map(|_| rng.random_range(0.0..1.0)).collect())
            .collect()
    }

    #[test]
    fn our_predictions_equal_egobox_bit_for_bit() {
        let mut rng = StdRng::seed_from_u64(5);
        for (kernel, points) in [(Kernel::Matern52, 37), (Kernel::SquaredExponential, 21)] {
            let dimension = 4;
            let x = random_points(&mut rng, points, dimension);
            let y: Vec<f64> = x
                .iter()
                .map(|p| (3.0 * p[0]).sin() + p[1] * p[2] - p[3])
                .collect();
            let bounds = vec![NUMBER_THETA; dimension];
            let gp = Gp::fit_bounded(&x, &y, kernel, &bounds).unwrap();
            // One point, a few, more than a block, and the training points themselves.
            for batch in [1, 5, 150] {
                let at = random_points(&mut rng, batch, dimension);
                let ours = gp.predict_many(&at).unwrap();
                let theirs = egobox_predictions(&gp, &at);
                for ((m, v), (em, ev)) in ours.iter().zip(&theirs) {
                    assert_eq!(
                        m.to_bits(),
                        em.to_bits(),
                        "{kernel:?} mean {m} against {em}"
                    );
                    assert_eq!(
                        v.to_bits(),
                        ev.to_bits(),
                        "{kernel:?} variance {v} against {ev}"
                    );
                }
            }
            let ours = gp.predict_many(&x).unwrap();
            assert_eq!(ours, egobox_predictions(&gp, &x));
            // At the data the GP interpolates (nugget 1e-6): mean ≈ value, variance ≈ 0.
            for ((m, v), target) in ours.iter().zip(&y) {
                assert!(
                    (m - target).abs() < 1e-3 && *v < 1e-4,
                    "{m} {v} at {target}"
                );
            }
        }
    }

    #[test]
    fn conditioned_predictions_equal_egobox_update() {
        let mut rng = StdRng::seed_from_u64(6);
        let dimension = 3;
        let x = random_points(&mut rng, 25, dimension);
        let y: Vec<f64> = x.iter().map(|p| p[0] * p[0] - p[1] + 0.3 * p[2]).collect();
        let gp = Gp::fit_bounded(&x, &y, Kernel::Matern52, &vec![NUMBER_THETA; dimension]).unwrap();
        let pending = random_points(&mut rng, 3, dimension);
        let beliefs: Vec<f64> = gp
            .predict_many(&pending)
            .unwrap()
            .iter()
            .map(|(m, _)| *m)
            .collect();
        let conditioned = gp.with_points(&pending, &beliefs).unwrap();
        let at = random_points(&mut rng, 80, dimension);
        let ours = conditioned.predict_many(&at).unwrap();
        let theirs = egobox_predictions(&conditioned, &at);
        for ((m, v), (em, ev)) in ours.iter().zip(&theirs) {
            assert!(
                (m - em).abs() <= 1e-9 * em.abs().max(1.0),
                "mean {m} against {em}"
            );
            assert!(
                (v - ev).abs() <= 1e-9 * ev.abs().max(1e-6),
                "variance {v} against {ev}"
            );
        }
        // Conditioning on the believed mean leaves the mean as it was and shrinks the variance
        // at the pending points.
        let before = gp.predict_many(&pending).unwrap();
        let after = conditioned.predict_many(&pending).unwrap();
        for ((m0, v0), (m1, v1)) in before.iter().zip(&after) {
            assert!((m0 - m1).abs() < 1e-6, "{m0} against {m1}");
            assert!(v1 < v0 && *v1 < 1e-4, "variance {v0} → {v1}");
        }
    }
}
