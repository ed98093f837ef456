//! Pareto utilities: the non-dominated set and the 2-D hypervolume (every objective minimised).

/// Indices of the non-dominated points (every objective minimised).
pub fn non_dominated(points: &[Vec<f64>]) -> Vec<usize> {
    (0..points.len())
        .filter(|&i| {
            !points.iter().enumerate().any(|(j, q)| {
                j != i
                    && q.iter().zip(&points[i]).all(|(a, b)| a <= b)
                    && q.iter().zip(&points[i]).any(|(a, b)| a < b)
            })
        })
        .collect()
}

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
