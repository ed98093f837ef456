//! Pareto dominance, the one rule behind every front in cthpo (the optimiser's
//! [`crate::opt::non_dominated`], the store's [`crate::store::pareto_front_indices`], the plots).
//! It depends on nothing else in the crate, so every module may use it.

/// True when `a` dominates `b`, every coordinate minimised: no worse in any, better in one.
pub fn dominates(a: &[f64], b: &[f64]) -> bool {
    a.iter().zip(b).all(|(x, y)| x <= y) && a.iter().zip(b).any(|(x, y)| x < y)
}

/// Indices, in input order, of the points no other point dominates (every coordinate
/// minimised). A point with a NaN coordinate is on no front and dominates nothing.
pub fn non_dominated(points: &[Vec<f64>]) -> Vec<usize> {
    let comparable = |p: &Vec<f64>| !p.iter().any(|v| v.is_nan());
    (0..points.len())
        .filter(|&i| {
            comparable(&points[i])
                && !points
                    .iter()
                    .enumerate()
                    .any(|(j, q)| j != i && comparable(q) && dominates(q, &points[i]))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn front_of_minimised_points() {
        let points = vec![
            vec![1.0, 4.0],
            vec![2.0, 2.0],
            vec![3.0, 3.0], // dominated by [2, 2]
            vec![4.0, 1.0],
            vec![2.0, 2.0], // equal points do not dominate each other
            vec![f64::NAN, 0.0],
        ];
        assert_eq!(non_dominated(&points), vec![0, 1, 3, 4]);
    }
}
