//! Shi et al.'s regulariser on the interval pass: its value and its gradient with respect to
//! each ReLU's input box, as `train::regularizer` computes it through autograd.

use crate::kernels::{BoxGradient, box_statistics};
use crate::train::TrainError;
use crate::train::regularizer::SHI_TOLERANCE;
use candle_core::Tensor;
use std::collections::HashMap;

/// Gradient of `max(x, floor)` in `x`, split at a tie as candle's `maximum` splits it.
fn above(x: f64, floor: f64) -> f64 {
    if x > floor {
        1.0
    } else if x == floor {
        0.5
    } else {
        0.0
    }
}

/// `min(x, 1/max(x, ε))` (a ratio folded into (0, 1]) and its derivative.
fn symmetric(x: f64) -> (f64, f64) {
    let floored = x.max(1e-12);
    let inverse = 1.0 / floored;
    let d_inverse = -above(x, 1e-12) / (floored * floored);
    let value = x.min(inverse);
    let derivative = if x < inverse {
        1.0
    } else if x > inverse {
        d_inverse
    } else {
        0.5 * (1.0 + d_inverse)
    };
    (value, derivative)
}

/// Shi et al.'s regulariser over the ReLU input boxes `(layer, c, r)` as
/// `train::regularizer::shi_regularizer` computes it, times `weight`: its value and the
/// gradient with respect to each box. `None` without ReLUs.
#[allow(clippy::type_complexity)]
pub(super) fn shi_regularizer(
    relu_boxes: &[(usize, &Tensor, &Tensor)],
    input_radius: f64,
    weight: f64,
) -> Result<Option<(f64, HashMap<usize, BoxGradient>)>, TrainError> {
    if relu_boxes.is_empty() {
        return Ok(None);
    }
    let tau = SHI_TOLERANCE;
    let per_layer = weight / relu_boxes.len() as f64;
    let mut value = 0.0;
    let mut gradients = HashMap::new();
    for &(index, centre, radius) in relu_boxes {
        let s = box_statistics(centre, radius)?;
        let n = s.count.max(1.0);
        // Tightness: relu(τ − r̄₀ / max(mean r, ε)) / τ.
        let mean_radius = s.radius_sum / n;
        let floored = mean_radius.max(1e-12);
        let tight = tau - input_radius / floored;
        value += per_layer * tight.max(0.0) / tau;
        let d_mean_radius = if tight >= 0.0 {
            per_layer * input_radius / (floored * floored) / tau * above(mean_radius, 1e-12)
        } else {
            0.0
        };
        let mut gradient = BoxGradient {
            radius: (d_mean_radius / n) as f32,
            ..BoxGradient::default()
        };
        // Balance of the stably active and inactive centres' means and spreads.
        if s.active > 0.0 && s.inactive > 0.0 {
            let mean = s.centre_sum / n;
            let (mean_active, mean_inactive) = (s.active_centre_sum / n, s.inactive_centre_sum / n);
            let spread = |squares: f64, sum: f64, count: f64| {
                squares - 2.0 * mean * sum + mean * mean * count
            };
            let var_active = spread(s.active_square_sum, s.active_centre_sum, s.active);
            let var_inactive = spread(s.inactive_square_sum, s.inactive_centre_sum, s.inactive);
            let mean_floor = (-mean_inactive).max(1e-12);
            let var_floor = var_inactive.max(1e-12);
            let (mean_ratio, var_ratio) = (mean_active / mean_floor, var_active / var_floor);
            let (mean_sym, d_mean_sym) = symmetric(mean_ratio);
            let (var_sym, d_var_sym) = symmetric(var_ratio);
            let balance = ((tau - mean_sym).max(0.0) + (tau - var_sym).max(0.0)) / tau;
            if balance.is_finite() {
                value += per_layer * balance;
                let d_mean_ratio = if tau - mean_sym >= 0.0 {
                    -per_layer / tau * d_mean_sym
                } else {
                    0.0
                };
                let d_var_ratio = if tau - var_sym >= 0.0 {
                    -per_layer / tau * d_var_sym
                } else {
                    0.0
                };
                let d_mean_active = d_mean_ratio / mean_floor;
                let d_mean_inactive = d_mean_ratio * mean_active / (mean_floor * mean_floor)
                    * above(-mean_inactive, 1e-12);
                let d_var_active = d_var_ratio / var_floor;
                let d_var_inactive = -d_var_ratio * var_active / (var_floor * var_floor)
                    * above(var_inactive, 1e-12);
                // ∂/∂c_k of Σ (c − m)² [active] includes the path through m = mean(c).
                let offset = -2.0 / n
                    * (d_var_active * (s.active_centre_sum - mean * s.active)
                        + d_var_inactive * (s.inactive_centre_sum - mean * s.inactive));
                gradient.active = (d_mean_active / n) as f32;
                gradient.inactive = (d_mean_inactive / n) as f32;
                gradient.active_deviation = d_var_active as f32;
                gradient.inactive_deviation = d_var_inactive as f32;
                gradient.mean = mean as f32;
                gradient.offset = offset as f32;
            }
        }
        gradients.insert(index, gradient);
    }
    Ok(Some((value, gradients)))
}
