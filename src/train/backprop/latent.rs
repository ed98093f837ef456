//! TAPS' classifier part: the latent attack through the input-gradient pass, the pivot points'
//! pass with parameter gradients, and the gradient connector back to the latent box.
//!
//! Rows are (sample, other class) pairs, `K − 1` per sample, so the classifier runs on
//! `B·(K − 1)` points. Rows are independent (BatchNorm reads the clean batch's fixed maps), so
//! the part runs on groups of samples, each group's attack, forward and backward before the
//! next: the latent boxes of a large batch are never repeated `K − 1` times at once, while each
//! group is large enough for the classifier's products to run on many rows.

use super::Gradients;
use super::clean::{self, BatchNormAffine, BatchNormSums, BatchNorms};
use super::input::InputGradientPass;
use super::loss::{robust_cross_entropy_gradient, scaled};
use crate::kernels::link_box_gradient;
use crate::model::Layer;
use crate::train::TrainError;
use crate::train::methods::{LINK_SLACK, LatentAttack};
use candle_core::Tensor;
use rand::rngs::StdRng;
use std::collections::HashMap;

/// Latent values (rows × features) a group of samples may always hold in one tensor: 2 MB of
/// f32.
const GROUP_VALUES: usize = 1 << 19;

/// Beyond [`GROUP_VALUES`], a group's latent values may reach the batch's activation values
/// (every layer's output, as one clean pass produces them) divided by this. The interval pass
/// the step runs anyway holds about twice those, and a group's attack and pivot pass hold about
/// five times its latent values, so the step stays within 1.5× the IBP step's memory,
/// while the classifier's products run on hundreds of rows instead of re-reading the weights
/// for a handful (`cnn7`'s 25,088 × 512 linear layer: 51 MB per pass).
const GROUP_SHARE: usize = 5;

/// TAPS' classifier layers `layers[split..]` at one step: what the loss reads and where its
/// gradient goes.
pub(super) struct LatentPart<'a> {
    /// The network's layers.
    pub(super) layers: &'a [Layer],
    /// The first classifier layer.
    pub(super) split: usize,
    /// The pivot search.
    pub(super) attack: &'a LatentAttack,
    /// The clean batch's BatchNorm maps, held fixed (their sums go to the clean pass).
    pub(super) batch_norms: &'a HashMap<usize, BatchNormAffine>,
    /// Values of one sample's activations over every layer (what sizes the groups).
    pub(super) sample_activations: usize,
}

impl LatentPart<'_> {
    /// TAPS' loss (robust cross-entropy of the classifier's margins at the pivot points) over
    /// the latent box `(centre, radius)` `[B, …]`, and the gradient of `weight ×` that loss
    /// with respect to the box's centre and radius. Parameter gradients go to `gradients`,
    /// BatchNorm scale and shift sums to `sums`; `spec` `[B, K − 1, K]` holds the margin rows.
    pub(super) fn loss_and_box_gradient(
        &self,
        (centre, radius): (&Tensor, &Tensor),
        (spec, labels): (&Tensor, &[u32]),
        weight: f64,
        gradients: &mut Gradients,
        sums: &mut BatchNormSums,
        rng: &mut StdRng,
    ) -> Result<(f64, (Tensor, Tensor)), TrainError> {
        let (batch, rows, classes) = spec.dims3()?;
        let sample_dims = centre.dims()[1..].to_vec();
        let features: usize = sample_dims.iter().product();
        let lower = (centre - radius)?;
        let upper = (centre + radius)?;
        let budget = GROUP_VALUES.max(batch * self.sample_activations / GROUP_SHARE);
        let largest = (budget / (rows * features).max(1)).clamp(1, batch.max(1));
        // Groups of even size, so no small last group runs skinny products alone.
        let group = batch.div_ceil(batch.div_ceil(largest).max(1)).max(1);
        let network = InputGradientPass::from_layer(self.layers, self.split, self.batch_norms);
        let mut loss = 0.0;
        let (mut d_centre, mut d_radius) = (Vec::new(), Vec::new());
        for first in (0..batch).step_by(group) {
            let samples = group.min(batch - first);
            let repeat: Vec<u32> = (first as u32..(first + samples) as u32)
                .flat_map(|b| std::iter::repeat_n(b, rows))
                .collect();
            let repeat = Tensor::from_vec(repeat, samples * rows, centre.device())?;
            let lower = lower.index_select(&repeat, 0)?;
            let upper = upper.index_select(&repeat, 0)?;
            let row_spec = spec
                .narrow(0, first, samples)?
                .reshape((samples * rows, classes))?;
            let start = LatentAttack::random_start((&lower, &upper), rng)?;
            let pivot = self.search(&network, start, (&lower, &upper), &row_spec, rows)?;

            let pass = clean::forward_from(
                BatchNorms::Fixed(self.batch_norms),
                self.layers,
                self.split,
                &pivot,
                true,
            )?;
            let group_margins = (&row_spec * &pass.logits)?
                .sum(1)?
                .reshape((samples, rows))?
                .to_vec2::<f32>()?;
            let (group_loss, margin_gradient) = robust_cross_entropy_gradient(
                &group_margins,
                &labels[first..first + samples],
                batch,
            )?;
            // The group's share of the batch's mean.
            loss += group_loss;
            let margin_gradient = Tensor::from_vec(
                scaled(&margin_gradient, weight),
                (samples * rows, 1),
                centre.device(),
            )?;
            let mut g = row_spec.broadcast_mul(&margin_gradient)?;
            for (index, saved) in pass.saved.into_iter().rev() {
                g = clean::backward(
                    (index, &self.layers[index]),
                    saved,
                    g,
                    self.batch_norms.get(&index),
                    sums,
                    true,
                    Some(gradients),
                )?;
            }

            // The connector: the pivot's gradient reaches the faces it presses against, summed
            // over the sample's K − 1 rows.
            let (group_centre, group_radius) =
                link_box_gradient(&pivot, (&lower, &upper), &g, rows, LINK_SLACK as f32)?;
            d_centre.push(group_centre);
            d_radius.push(group_radius);
        }
        let box_shape: Vec<usize> = std::iter::once(batch).chain(sample_dims).collect();
        let d_centre = Tensor::cat(&d_centre, 0)?.reshape(box_shape.as_slice())?;
        let d_radius = Tensor::cat(&d_radius, 0)?.reshape(box_shape.as_slice())?;
        Ok((loss, (d_centre, d_radius)))
    }

    /// The latent attack on a group's rows from `start`, its samples split across the pool's
    /// threads, each shard attacked through every step with single-threaded kernels (as the
    /// training attacks shard their batch): one fork and join per group instead of one per
    /// kernel, each shard's buffers in its own thread's cache. Rows are attacked independently,
    /// so the split does not change the points.
    pub(super) fn search(
        &self,
        network: &InputGradientPass<'_>,
        start: Tensor,
        (lower, upper): (&Tensor, &Tensor),
        row_spec: &Tensor,
        rows_per_sample: usize,
    ) -> Result<Tensor, TrainError> {
        let samples = lower.dim(0)? / rows_per_sample.max(1);
        let pivots = crate::kernels::in_shards(samples, true, |range| {
            let narrow = |t: &Tensor| {
                t.narrow(
                    0,
                    range.start * rows_per_sample,
                    range.len() * rows_per_sample,
                )
            };
            let spec = narrow(row_spec)?;
            let mut margins =
                |z: &Tensor, with_gradient: bool| network.margins(z, &spec, with_gradient);
            self.attack.search_from(
                narrow(&start)?,
                (&narrow(lower)?, &narrow(upper)?),
                &mut margins,
            )
        })?;
        let pivots: Vec<Tensor> = pivots.into_iter().map(|(_, pivot)| pivot).collect();
        Ok(Tensor::cat(&pivots, 0)?)
    }
}
