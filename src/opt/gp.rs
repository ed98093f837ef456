//! A Gaussian-process surrogate on egobox-gp: constant mean, Matérn 5/2 or squared-exponential
//! correlation with one length scale per input, fitted by maximum likelihood.

use egobox_gp::correlation_models::{CorrelationModel, Matern52Corr, SquaredExponentialCorr};
use egobox_gp::mean_models::ConstantMean;
use egobox_gp::{GaussianProcess, GpError};
use linfa::prelude::{Dataset, Fit};
use ndarray::{Array1, Array2};
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
/// Diagonal jitter relative to the (normalised) signal variance, so near-duplicate points do not
/// make the correlation matrix singular.
const NUGGET: f64 = 1e-6;

/// egobox's default range of θ: what one-hot categorical inputs keep, since a choice that does
/// not matter needs a length scale far beyond the cube.
pub const WIDE_THETA: (f64, f64) = (1e-2, 10.0);

/// The range of θ for a number's input. The floor keeps the fit from explaining a few points by
/// a nearly flat surface, which would leave the acquisition exploiting one basin: measured with
/// `bench_opt --strategies gp_bo`, 20 seeds × 50 evaluations, it takes Hartmann-6's median regret
/// from 0.016 to 3e-4 (see docs/optimiser.md).
pub const NUMBER_THETA: (f64, f64) = (0.3, 30.0);

enum Fitted {
    Matern(GaussianProcess<f64, ConstantMean, Matern52Corr>),
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

/// A fitted Gaussian process over feature vectors of equal length.
pub struct Gp {
    fitted: Fitted,
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
        let records = to_matrix(x, dimension)?;
        let bounds = Array1::from_vec(theta_bounds.to_vec());
        let starts = LIKELIHOOD_STARTS;
        let dataset = Dataset::new(records, Array1::from_vec(y.to_vec()));
        let fitted = match kernel {
            Kernel::Matern52 => {
                Fitted::Matern(fit_with(Matern52Corr(), &dataset, starts, &bounds)?)
            }
            Kernel::SquaredExponential => Fitted::Squared(fit_with(
                SquaredExponentialCorr(),
                &dataset,
                starts,
                &bounds,
            )?),
        };
        Ok(Gp { fitted, dimension })
    }

    /// Predictive means and variances at many points at once.
    pub fn predict_many(&self, points: &[Vec<f64>]) -> Result<Vec<(f64, f64)>, GpError> {
        if points.is_empty() {
            return Ok(Vec::new());
        }
        let x = to_matrix(points, self.dimension)?;
        let (mean, variance) = match &self.fitted {
            Fitted::Matern(gp) => gp.predict_valvar(&x)?,
            Fitted::Squared(gp) => gp.predict_valvar(&x)?,
        };
        Ok(mean.iter().copied().zip(variance.iter().copied()).collect())
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

/// Maximum-likelihood fit of a constant-mean GP with correlation `corr`.
fn fit_with<Corr: CorrelationModel<f64>>(
    corr: Corr,
    dataset: &Dataset<f64, f64, ndarray::Ix1>,
    starts: usize,
    theta_bounds: &Array1<(f64, f64)>,
) -> Result<GaussianProcess<f64, ConstantMean, Corr>, GpError> {
    GaussianProcess::<f64, ConstantMean, Corr>::params(ConstantMean(), corr)
        .n_start(starts)
        .nugget(NUGGET)
        .theta_bounds(theta_bounds.clone())
        .fit(dataset)
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
