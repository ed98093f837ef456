//! Pareto utilities: the non-dominated set and the 2-D hypervolume (every objective minimised).

pub use crate::pareto::non_dominated;

/// Area dominated by 2-D points (both minimised) up to `reference`.
pub fn hypervolume_2d(points: &[Vec<f64>], reference: [f64; 2]) -> f64 {
    let mut front: Vec<(f64, f64)> = non_dominated(points)
        .into_iter()
        .map(|i| (points[i][0], points[i][1]))
        .filter(|(a, b)| *a < reference[0] && *b < reference[1])
        .collect();
    front.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut area = 0.0;
    let mut previous_y = reference[1];
    for (x, y) in front {
        if y < previous_y {
            area += (reference[0] - x) * (previous_y - y);
            previous_y = y;
        }
    }
    area
}
