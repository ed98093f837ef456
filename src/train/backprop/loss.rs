//! The losses at the top of the reverse pass: cross-entropy of the clean logits and the robust
//! cross-entropy of margin lower bounds, each with its gradient.

use crate::bounds::margin_row_class;
use crate::train::TrainError;

/// `values` each multiplied by `factor` (in f64, as the losses mix).
pub(super) fn scaled(values: &[f32], factor: f64) -> Vec<f32> {
    values
        .iter()
        .map(|v| (f64::from(*v) * factor) as f32)
        .collect()
}

/// Mean cross-entropy of `logits` rows and its gradient `(softmax − onehot)/B`.
pub(super) fn cross_entropy_gradient(
    logits: &[Vec<f32>],
    labels: &[u32],
) -> Result<(f64, Vec<f32>), TrainError> {
    cross_entropy_part_gradient(logits, labels, logits.len())
}

/// The cross-entropy of `logits` rows, part of a batch of `batch` samples, summed and divided
/// by `batch`, and its gradient `(softmax − onehot)/batch`: the rows' share of the batch's mean
/// and of its gradient.
pub(super) fn cross_entropy_part_gradient(
    logits: &[Vec<f32>],
    labels: &[u32],
    batch: usize,
) -> Result<(f64, Vec<f32>), TrainError> {
    let batch = batch.max(1) as f64;
    let mut loss = 0.0;
    let mut gradient = Vec::with_capacity(logits.len() * logits.first().map_or(0, Vec::len));
    for (row, &label) in logits.iter().zip(labels) {
        let label = label as usize;
        if label >= row.len() {
            return Err(TrainError::Data(format!(
                "label {label} for {} classes",
                row.len()
            )));
        }
        let max = row
            .iter()
            .fold(f64::NEG_INFINITY, |m, &v| m.max(f64::from(v)));
        let exps: Vec<f64> = row.iter().map(|&v| (f64::from(v) - max).exp()).collect();
        let total: f64 = exps.iter().sum();
        loss += total.ln() + max - f64::from(row[label]);
        for (class, e) in exps.iter().enumerate() {
            let onehot = if class == label { 1.0 } else { 0.0 };
            gradient.push(((e / total - onehot) / batch) as f32);
        }
    }
    Ok((loss / batch, gradient))
}

/// Robust cross-entropy of margin lower bounds `[n, K−1]` (logit `0` for the label, `−m` for
/// the others, placed as `bounds::robust_logits` places them) of `n` samples of a batch of
/// `batch`, and its gradient in the margins: their share of the batch's mean and its gradient.
pub(super) fn robust_cross_entropy_gradient(
    margins: &[Vec<f32>],
    labels: &[u32],
    batch: usize,
) -> Result<(f64, Vec<f32>), TrainError> {
    let logits: Vec<Vec<f32>> = margins
        .iter()
        .zip(labels)
        .map(|(row, &label)| {
            let mut logits = vec![0f32; row.len() + 1];
            for (r, m) in row.iter().enumerate() {
                logits[margin_row_class(label, r)] = -m;
            }
            logits
        })
        .collect();
    let (loss, logit_gradient) = cross_entropy_part_gradient(&logits, labels, batch)?;
    let classes = margins.first().map_or(1, |row| row.len() + 1);
    let mut gradient = Vec::with_capacity(margins.len() * (classes - 1));
    for (row, &label) in logit_gradient.chunks(classes).zip(labels) {
        gradient.extend((0..classes - 1).map(|r| -row[margin_row_class(label, r)]));
    }
    Ok((loss, gradient))
}
