//! A small projected L-BFGS that maximises a smooth function over the unit box, for polishing
//! the acquisition's continuous coordinates: quasi-Newton directions from the last few steps
//! (two-loop recursion) restricted to the coordinates not pinned at a bound, steps projected
//! back into the box and accepted by a backtracking Armijo rule.

/// Curvature pairs kept.
const MEMORY: usize = 6;
/// Longest first step along any coordinate (a tenth of the axis).
const FIRST_STEP: f64 = 0.1;
/// Armijo's sufficient-increase factor.
const ARMIJO: f64 = 1e-4;
/// Halvings of a step before the line search gives up.
const BACKTRACKS: usize = 20;

/// Maximises `f` (value and gradient, `None` where it cannot be evaluated) over `[0, 1]ⁿ` from
/// `start` in at most `iterations` steps; returns the best point found and its value.
pub fn maximise_in_unit_box(
    f: &mut impl FnMut(&[f64]) -> Option<(f64, Vec<f64>)>,
    start: &[f64],
    iterations: usize,
) -> Option<(Vec<f64>, f64)> {
    let mut x: Vec<f64> = start.iter().map(|v| v.clamp(0.0, 1.0)).collect();
    // Minimise the negation, as L-BFGS is usually written.
    let (value, gradient) = f(&x)?;
    let (mut fx, mut gx) = (-value, gradient.iter().map(|g| -g).collect::<Vec<f64>>());
    if !fx.is_finite() || gx.iter().any(|g| !g.is_finite()) {
        return None;
    }
    let mut pairs: Vec<(Vec<f64>, Vec<f64>, f64)> = Vec::new();
    for _ in 0..iterations {
        // Coordinates at a bound whose descent direction leaves the box stay put.
        let free: Vec<bool> = x
            .iter()
            .zip(&gx)
            .map(|(&xi, &gi)| !((xi <= 0.0 && gi > 0.0) || (xi >= 1.0 && gi < 0.0)))
            .collect();
        let masked = |v: &[f64]| -> Vec<f64> {
            v.iter()
                .zip(&free)
                .map(|(vi, &keep)| if keep { *vi } else { 0.0 })
                .collect()
        };
        let mut direction: Vec<f64> = two_loop(&masked(&gx), &pairs)
            .into_iter()
            .map(|d| -d)
            .collect();
        direction = masked(&direction);
        if dot(&direction, &gx) >= 0.0 {
            // Not a descent direction (curvature pairs from another face): steepest descent.
            direction = masked(&gx).into_iter().map(|g| -g).collect();
        }
        let longest = direction.iter().fold(0.0f64, |m, d| m.max(d.abs()));
        if longest < 1e-12 {
            break;
        }
        if pairs.is_empty() {
            direction
                .iter_mut()
                .for_each(|d| *d *= FIRST_STEP / longest);
        }
        let mut step = 1.0;
        let mut accepted = None;
        for _ in 0..BACKTRACKS {
            let trial: Vec<f64> = x
                .iter()
                .zip(&direction)
                .map(|(xi, di)| (xi + step * di).clamp(0.0, 1.0))
                .collect();
            let moved: Vec<f64> = trial.iter().zip(&x).map(|(t, xi)| t - xi).collect();
            if let Some((value, gradient)) = f(&trial)
                && value.is_finite()
                && gradient.iter().all(|g| g.is_finite())
                && -value <= fx + ARMIJO * dot(&gx, &moved)
            {
                accepted = Some((trial, moved, -value, gradient));
                break;
            }
            step *= 0.5;
        }
        let Some((next, s, f_next, gradient)) = accepted else {
            break;
        };
        let g_next: Vec<f64> = gradient.iter().map(|g| -g).collect();
        let y: Vec<f64> = g_next.iter().zip(&gx).map(|(a, b)| a - b).collect();
        let curvature = dot(&s, &y);
        let improvement = fx - f_next;
        let moved = s.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        if curvature > 1e-12 {
            if pairs.len() == MEMORY {
                pairs.remove(0);
            }
            pairs.push((s, y, 1.0 / curvature));
        }
        x = next;
        fx = f_next;
        gx = g_next;
        if improvement.abs() < 1e-10 * fx.abs().max(1.0) || moved < 1e-9 {
            break;
        }
    }
    Some((x, -fx))
}

/// L-BFGS's two-loop recursion: the inverse-Hessian estimate applied to `gradient`.
fn two_loop(gradient: &[f64], pairs: &[(Vec<f64>, Vec<f64>, f64)]) -> Vec<f64> {
    let mut q = gradient.to_vec();
    let mut alphas = Vec::with_capacity(pairs.len());
    for (s, y, rho) in pairs.iter().rev() {
        let alpha = rho * dot(s, &q);
        q.iter_mut().zip(y).for_each(|(qi, yi)| *qi -= alpha * yi);
        alphas.push(alpha);
    }
    if let Some((s, y, _)) = pairs.last() {
        let gamma = dot(s, y) / dot(y, y).max(1e-300);
        q.iter_mut().for_each(|qi| *qi *= gamma);
    }
    for ((s, y, rho), alpha) in pairs.iter().zip(alphas.into_iter().rev()) {
        let beta = rho * dot(y, &q);
        q.iter_mut()
            .zip(s)
            .for_each(|(qi, si)| *qi += (alpha - beta) * si);
    }
    q
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(test)]
mod tests {
    use super::maximise_in_unit_box;

    #[test]
    fn finds_an_interior_and_a_boundary_maximum() {
        // Maximum at x = 0.3 inside the box; y wants 1.2, so it stops at the bound 1.
        let mut calls = 0;
        let mut f = |p: &[f64]| {
            calls += 1;
            let value = -(p[0] - 0.3).powi(2) - 4.0 * (p[1] - 1.2).powi(2) - p[0] * p[1];
            Some((
                value,
                vec![-2.0 * (p[0] - 0.3) - p[1], -8.0 * (p[1] - 1.2) - p[0]],
            ))
        };
        let (x, value) = maximise_in_unit_box(&mut f, &[0.9, 0.1], 50).unwrap();
        // With y = 1: maximise −(x−0.3)² − x → x = −0.2, clamped to 0.
        assert!(x[0].abs() < 1e-6 && (x[1] - 1.0).abs() < 1e-9, "{x:?}");
        assert!((value - (-0.09 - 0.16)).abs() < 1e-6, "{value}");
        assert!(calls < 200, "{calls} evaluations");
    }
}
