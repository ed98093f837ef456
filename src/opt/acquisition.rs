//! Log expected improvement, computed stably even where the improvement is astronomically small.
//!
//! For minimisation with incumbent `f*`, predictive mean `μ` and deviation `σ`:
//! `EI = σ·h(z)`, `z = (f* − μ)/σ`, `h(z) = φ(z) + zΦ(z)`. For `z < −8` the direct sum cancels
//! catastrophically and then underflows, so `log h` uses the asymptotic series
//! `log h(z) = −z²/2 − ½log 2π + log(z⁻² − 3z⁻⁴ + 15z⁻⁶ − 105z⁻⁸ + 945z⁻¹⁰)`
//! (the approach of Ament et al., 2023, "Unexpected improvements to expected improvement").

use super::gp::Prediction;

/// Complementary error function (Numerical Recipes' Chebyshev fit, relative error < 1.2e-7).
pub fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let value = t * poly.exp();
    if x >= 0.0 { value } else { 2.0 - value }
}

/// `log h(z)` with `h(z) = φ(z) + zΦ(z)`.
pub fn log_h(z: f64) -> f64 {
    const HALF_LOG_TWO_PI: f64 = 0.918_938_533_204_672_8;
    if z > -8.0 {
        let pdf = (-0.5 * z * z - HALF_LOG_TWO_PI).exp();
        let cdf = 0.5 * erfc(-z / std::f64::consts::SQRT_2);
        (pdf + z * cdf).max(f64::MIN_POSITIVE).ln()
    } else {
        let inv = 1.0 / (z * z);
        let series = inv
            * (1.0 - 3.0 * inv + 15.0 * inv.powi(2) - 105.0 * inv.powi(3) + 945.0 * inv.powi(4));
        -0.5 * z * z - HALF_LOG_TWO_PI + series.ln()
    }
}

/// `log EI` at predictive mean `mean` and variance `variance` against incumbent `best` (minimise).
pub fn log_expected_improvement(mean: f64, variance: f64, best: f64) -> f64 {
    let sigma = variance.max(1e-18).sqrt();
    let z = (best - mean) / sigma;
    sigma.ln() + log_h(z)
}

/// `log Φ(x)`, the log of the standard normal distribution function, accurate far into the
/// lower tail (where `Φ` itself underflows): the probability that a Gaussian constraint
/// value of mean `−x·σ` and spread `σ` is ≤ 0.
pub fn log_normal_cdf(x: f64) -> f64 {
    const HALF_LOG_TWO_PI: f64 = 0.918_938_533_204_672_8;
    if x > -8.0 {
        (0.5 * erfc(-x / std::f64::consts::SQRT_2))
            .max(f64::MIN_POSITIVE)
            .ln()
    } else {
        // Φ(x) = φ(x)/(−x) · (1 − 1/x² + 3/x⁴ − 15/x⁶ + …)
        let inv = 1.0 / (x * x);
        let series = 1.0 - inv + 3.0 * inv.powi(2) - 15.0 * inv.powi(3) + 105.0 * inv.powi(4);
        -0.5 * x * x - HALF_LOG_TWO_PI - (-x).ln() + series.ln()
    }
}

/// `log P(c ≤ 0)` for a constraint value `c` predicted Gaussian with `mean` and `variance`:
/// the log probability that a configuration is feasible.
pub fn log_probability_of_feasibility(mean: f64, variance: f64) -> f64 {
    log_normal_cdf(-mean / variance.max(1e-18).sqrt())
}

/// `log φ(x)`, the log of the standard normal density.
fn log_normal_pdf(x: f64) -> f64 {
    -0.5 * x * x - 0.918_938_533_204_672_8
}

/// `log EI` against incumbent `best` at a prediction, and its gradient along the prediction's
/// inputs (through the mean and the variance: d log EI = dσ/σ + Φ(z)/h(z)·dz).
pub fn log_expected_improvement_gradient(at: &Prediction, best: f64) -> (f64, Vec<f64>) {
    let variance = at.variance.max(1e-18);
    let sigma = variance.sqrt();
    let z = (best - at.mean) / sigma;
    let value = sigma.ln() + log_h(z);
    // Φ(z)/h(z) from logs: both underflow far in the lower tail, their ratio does not.
    let ratio = (log_normal_cdf(z) - log_h(z)).exp();
    let gradient = at
        .mean_gradient
        .iter()
        .zip(&at.variance_gradient)
        .map(|(dm, dv)| {
            let dlog_sigma = 0.5 * dv / variance;
            dlog_sigma + ratio * (-dm / sigma - z * dlog_sigma)
        })
        .collect();
    (value, gradient)
}

/// `log P(c ≤ 0)` for a constraint predicted at `at`, and its gradient along the inputs.
pub fn log_probability_of_feasibility_gradient(at: &Prediction) -> (f64, Vec<f64>) {
    let variance = at.variance.max(1e-18);
    let sigma = variance.sqrt();
    let u = -at.mean / sigma;
    let value = log_normal_cdf(u);
    let ratio = (log_normal_pdf(u) - value).exp();
    let gradient = at
        .mean_gradient
        .iter()
        .zip(&at.variance_gradient)
        .map(|(dm, dv)| ratio * (-dm / sigma - u * 0.5 * dv / variance))
        .collect();
    (value, gradient)
}
