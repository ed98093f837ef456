//! Summary statistics shared by the benchmark examples.

/// First quartile, median and third quartile of `values` (which must not be empty), by linear
/// interpolation between order statistics, as numpy.percentile does, so the figures compare
/// with the Python peers' scripts.
pub fn quartiles(values: &[f64]) -> (f64, f64, f64) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let position = q * (sorted.len() - 1) as f64;
        let (low, high) = (position.floor() as usize, position.ceil() as usize);
        sorted[low] + (sorted[high] - sorted[low]) * (position - low as f64)
    };
    (at(0.25), at(0.5), at(0.75))
}
