//! Our own prediction path for a fitted GP: its Cholesky factor, weights and normalisation are
//! computed once per fit, then a batch of points is predicted through one blocked triangular
//! solve, vectorised across the points. egobox solves one column at a time with a strided slice
//! update per row, much of an ask's time at 200 trials and more; the arithmetic here is the
//! same operation for operation (the same factorisation by the same library, the same order of
//! every sum), so the predictions equal egobox's bit for bit (a test checks it).

use super::gp::{Kernel, SparseMatern52, matern52_of_scaled};
use egobox_gp::correlation_models::{CorrelationModel, SquaredExponentialCorr};
use egobox_gp::{DiffMatrix, GpError};
use linfa_linalg::cholesky::Cholesky;
use linfa_linalg::qr::QR;
use linfa_linalg::triangular::{SolveTriangular, SolveTriangularInplace, UPLO};
use ndarray::{Array1, Array2, ArrayView2, Axis};

/// Points predicted together: their correlations with every training point stay in cache
/// through the triangular solve.
const BLOCK: usize = 64;

/// Column means and standard deviations of a data set (constant columns get 1), as egobox
/// normalises its inputs and outputs.
#[derive(Debug, Clone)]
pub(crate) struct Normalisation {
    mean: Array1<f64>,
    std: Array1<f64>,
}

impl Normalisation {
    fn of(data: &Array2<f64>) -> Normalisation {
        let mean = data
            .mean_axis(Axis(0))
            .unwrap_or_else(|| Array1::zeros(data.ncols()));
        let mut std = data.std_axis(Axis(0), 1.0);
        std.mapv_inplace(|v| if v == 0.0 { 1.0 } else { v });
        Normalisation { mean, std }
    }

    fn apply(&self, data: &Array2<f64>) -> Array2<f64> {
        (data - &self.mean) / &self.std
    }
}

/// Everything a prediction needs from a fit of a constant-mean GP at fixed θ.
#[derive(Debug, Clone)]
pub(crate) struct Posterior {
    kernel: Kernel,
    theta: Array1<f64>,
    inputs: Normalisation,
    outputs: Normalisation,
    /// The training points and values as given, and the inputs normalised (one row each).
    raw_x: Array2<f64>,
    raw_y: Array1<f64>,
    train: Array2<f64>,
    /// The lower Cholesky factor of the correlation matrix, transposed (row `i` holds column
    /// `i` of the factor, what the forward substitution reads).
    factor_t: Vec<f64>,
    beta: Array2<f64>,
    gamma: Array2<f64>,
    /// `L⁻¹F` for the constant mean's regressors `F` (all ones), and the `R` of its QR.
    ft: Array2<f64>,
    ft_r: f64,
    sigma2: f64,
}

impl Posterior {
    /// The posterior of a GP with correlation `kernel` at `theta` and nugget `nugget` given
    /// points `x` (one row each) and values `y`, normalised by their own statistics (as a fit
    /// is) or by `frozen` ones (inputs, outputs: conditioning a fitted model on more points).
    pub(crate) fn new(
        kernel: Kernel,
        theta: &[f64],
        nugget: f64,
        (x, y): (&Array2<f64>, &Array1<f64>),
        frozen: Option<(&Normalisation, &Normalisation)>,
    ) -> Result<Posterior, GpError> {
        let (raw_x, raw_y) = (x.clone(), y.clone());
        let y = y.clone().insert_axis(Axis(1));
        let (inputs, outputs) = match frozen {
            Some((inputs, outputs)) => (inputs.clone(), outputs.clone()),
            None => (Normalisation::of(x), Normalisation::of(&y)),
        };
        let train = inputs.apply(x);
        let targets = outputs.apply(&y);
        let theta = Array1::from_vec(theta.to_vec());
        let n = train.nrows();
        // The correlation matrix and the generalised least squares exactly as egobox's
        // reduced likelihood builds them.
        let mut r = Array2::<f64>::eye(n).mapv(|v| v + v * nugget);
        if n > 1 {
            let distances = DiffMatrix::new(&train);
            let weights = Array2::<f64>::eye(train.ncols());
            let rxx = match kernel {
                Kernel::Matern52 => {
                    SparseMatern52.rval_from_distances(&distances.d, &theta, &weights)
                }
                Kernel::SquaredExponential => {
                    SquaredExponentialCorr().rval_from_distances(&distances.d, &theta, &weights)
                }
            };
            for (i, ij) in distances.d_indices.outer_iter().enumerate() {
                r[[ij[0], ij[1]]] = rxx[[i, 0]];
                r[[ij[1], ij[0]]] = rxx[[i, 0]];
            }
        }
        let fx = Array2::<f64>::ones((n, 1));
        let chol = r.cholesky()?;
        let ft = chol.solve_triangular(&fx, UPLO::Lower)?;
        let (ft_q, ft_r) = ft.qr()?.into_decomp();
        let yt = chol.solve_triangular(&targets, UPLO::Lower)?;
        let beta = ft_r.solve_triangular_into(ft_q.t().dot(&yt), UPLO::Upper)?;
        let rho = yt - ft.dot(&beta);
        let rho_sqr = rho.mapv(|v| v * v).sum_axis(Axis(0));
        let gamma = chol.t().solve_triangular_into(rho, UPLO::Upper)?;
        let sigma2 = rho_sqr[0] / n as f64 * outputs.std[0] * outputs.std[0];
        Ok(Posterior {
            kernel,
            theta,
            inputs,
            outputs,
            raw_x,
            raw_y,
            train,
            factor_t: chol.t().iter().copied().collect(),
            beta,
            gamma,
            ft,
            ft_r: ft_r[[0, 0]],
            sigma2,
        })
    }

    /// This posterior conditioned on further points at the same θ, nugget and normalisation.
    pub(crate) fn with_points(
        &self,
        nugget: f64,
        (x, y): (&Array2<f64>, &Array1<f64>),
    ) -> Result<Posterior, GpError> {
        let joined = |e: ndarray::ShapeError| GpError::InvalidValueError(e.to_string());
        let joint_x =
            ndarray::concatenate(Axis(0), &[self.raw_x.view(), x.view()]).map_err(joined)?;
        let joint_y =
            ndarray::concatenate(Axis(0), &[self.raw_y.view(), y.view()]).map_err(joined)?;
        Posterior::new(
            self.kernel,
            self.theta.as_slice().unwrap_or(&[]),
            nugget,
            (&joint_x, &joint_y),
            Some((&self.inputs, &self.outputs)),
        )
    }

    /// Predictive means and variances at `points` (one row each, raw features).
    pub(crate) fn predict(&self, points: &Array2<f64>) -> Vec<(f64, f64)> {
        let mut out = Vec::with_capacity(points.nrows());
        let xnorm = self.inputs.apply(points);
        for block in xnorm.axis_chunks_iter(Axis(0), BLOCK) {
            self.predict_block(&block, &mut out);
        }
        out
    }

    /// Correlations of each of `points` with every training point, training points along rows
    /// (`n × m`, row-major).
    fn correlations(&self, points: &ArrayView2<'_, f64>) -> Vec<f64> {
        let (n, m) = (self.train.nrows(), points.nrows());
        let mut corr = vec![0.0; n * m];
        match self.kernel {
            Kernel::Matern52 => {
                // SparseMatern52 with identity weights, term for term.
                for (k, point) in points.rows().into_iter().enumerate() {
                    for (t, train) in self.train.rows().into_iter().enumerate() {
                        corr[t * m + k] = matern52_of_scaled(
                            point
                                .iter()
                                .zip(train)
                                .zip(&self.theta)
                                .map(|((x, c), s)| s * (x - c).abs()),
                        );
                    }
                }
            }
            Kernel::SquaredExponential => {
                let d = self.train.ncols();
                let mut differences = Array2::<f64>::zeros((m * n, d));
                for (k, point) in points.rows().into_iter().enumerate() {
                    for (t, train) in self.train.rows().into_iter().enumerate() {
                        for l in 0..d {
                            differences[[k * n + t, l]] = point[l] - train[l];
                        }
                    }
                }
                let weights = Array2::<f64>::eye(d);
                let r = SquaredExponentialCorr().rval_from_distances(
                    &differences,
                    &self.theta,
                    &weights,
                );
                for k in 0..m {
                    for t in 0..n {
                        corr[t * m + k] = r[[k * n + t, 0]];
                    }
                }
            }
        }
        corr
    }

    fn predict_block(&self, points: &ArrayView2<'_, f64>, out: &mut Vec<(f64, f64)>) {
        let (n, m) = (self.train.nrows(), points.nrows());
        let mut corr = self.correlations(points);
        // Mean: β + rᵀγ, by the same matrix products as egobox.
        let means = {
            let view = ArrayView2::from_shape((n, m), &corr).expect("n × m correlations");
            let scaled = Array2::<f64>::ones((m, 1)).dot(&self.beta) + view.t().dot(&self.gamma);
            scaled * self.outputs.std[0] + self.outputs.mean[0]
        };
        // Forward substitution L·rt = r for all m columns at once, in linfa's order: row i is
        // divided by the diagonal, then subtracted (scaled) from every later row.
        for i in 0..n {
            let diagonal = self.factor_t[i * n + i];
            let (done, rest) = corr.split_at_mut((i + 1) * m);
            let row = &mut done[i * m..];
            for v in row.iter_mut() {
                *v /= diagonal;
            }
            for (j, later) in rest.chunks_exact_mut(m).enumerate() {
                let l = self.factor_t[i * n + i + 1 + j];
                for (y, c) in later.iter_mut().zip(row.iter()) {
                    *y += -c * l;
                }
            }
        }
        let rt = ArrayView2::from_shape((n, m), &corr).expect("n × m solves");
        let rhs = self.ft.t().dot(&rt);
        for k in 0..m {
            let u = (rhs[[0, k]] - 1.0) / self.ft_r;
            let squares = unrolled_sum((0..n).map(|t| {
                let v = corr[t * m + k];
                v * v
            }));
            let mse = self.sigma2 * ((1.0 - squares) + u * u);
            out.push((means[[k, 0]], if mse < 0.0 { 0.0 } else { mse }));
        }
    }
}

/// A sum in the order of ndarray's eightfold-unrolled fold (what `sum_axis` uses on contiguous
/// lanes), so the variance's rounding is egobox's.
fn unrolled_sum(values: impl ExactSizeIterator<Item = f64>) -> f64 {
    let len = values.len();
    let whole = len - len % 8;
    let mut partial = [0.0; 8];
    let mut acc = 0.0;
    for (i, v) in values.enumerate() {
        if i < whole {
            partial[i % 8] += v;
        } else {
            if i == whole {
                acc += partial[0] + partial[4];
                acc += partial[1] + partial[5];
                acc += partial[2] + partial[6];
                acc += partial[3] + partial[7];
            }
            acc += v;
        }
    }
    if whole == len {
        acc += partial[0] + partial[4];
        acc += partial[1] + partial[5];
        acc += partial[2] + partial[6];
        acc += partial[3] + partial[7];
    }
    acc
}
