//! The input-gradient pass of training attacks: the clean forward pass at BatchNorm maps held
//! fixed and its backward into the input alone, no parameter gradients and no graph.

use super::clean::{self, BatchNormAffine, BatchNormSums, BatchNorms, CleanSaved};
use super::conv::relu_masked_input_gradient;
use super::loss::cross_entropy_part_gradient;
use crate::attack::{AttackError, AttackLoss, InputGradient};
use crate::model::{Layer, Net, Normalization};
use crate::train::TrainError;
use candle_core::Tensor;
use std::collections::HashMap;

/// A network as a training attack reads it: its layers from the first one attacked and each
/// BatchNorm's fixed affine map.
pub(crate) struct InputGradientPass<'a> {
    layers: &'a [Layer],
    start: usize,
    batch_norms: &'a HashMap<usize, BatchNormAffine>,
}

impl<'a> InputGradientPass<'a> {
    /// The pass over `layers` with BatchNorm maps `batch_norms` (every BatchNorm's, by index).
    pub(crate) fn new(
        layers: &'a [Layer],
        batch_norms: &'a HashMap<usize, BatchNormAffine>,
    ) -> InputGradientPass<'a> {
        InputGradientPass::from_layer(layers, 0, batch_norms)
    }

    /// The pass over `layers[start..]`, its input being layer `start`'s (TAPS' classifier).
    pub(super) fn from_layer(
        layers: &'a [Layer],
        start: usize,
        batch_norms: &'a HashMap<usize, BatchNormAffine>,
    ) -> InputGradientPass<'a> {
        InputGradientPass {
            layers,
            start,
            batch_norms,
        }
    }

    /// The margins `spec_rows · logits` of each row of `x` and, `with_gradient`, the gradient
    /// of their sum with respect to `x` (TAPS' latent attack).
    pub(super) fn margins(
        &self,
        x: &Tensor,
        spec_rows: &Tensor,
        with_gradient: bool,
    ) -> Result<(Vec<f32>, Option<Tensor>), TrainError> {
        let pass = self.forward(x)?;
        let margins = (spec_rows * &pass.logits)?.sum(1)?.to_vec1::<f32>()?;
        let gradient = if with_gradient {
            Some(self.backward(pass.saved, spec_rows.clone())?)
        } else {
            None
        };
        Ok((margins, gradient))
    }

    fn forward(&self, x: &Tensor) -> Result<clean::CleanPass, TrainError> {
        let norms = BatchNorms::Fixed(self.batch_norms);
        clean::forward_from(norms, self.layers, self.start, x, false)
    }

    /// The input gradient from the logits' gradient `g` through the layers' kept state.
    fn backward(
        &self,
        saved: Vec<(usize, clean::CleanSaved)>,
        mut g: Tensor,
    ) -> Result<Tensor, TrainError> {
        let mut no_sums = BatchNormSums::new();
        let mut steps = saved.into_iter().rev().peekable();
        while let Some((index, saved)) = steps.next() {
            // A ReLU right after a convolution masks the gradient inside its transposed
            // convolution.
            if let CleanSaved::Relu {
                input: pre_activation,
            } = &saved
                && let Some((below, CleanSaved::Conv { input })) = steps.peek()
                && let Layer::Conv2d {
                    weight,
                    stride,
                    padding,
                    ..
                } = &self.layers[*below]
                && let Some(gradient) = relu_masked_input_gradient(
                    &g,
                    pre_activation,
                    &weight.detach(),
                    (*stride, *padding),
                    input,
                )?
            {
                g = gradient;
                steps.next();
                continue;
            }
            g = clean::backward(
                (index, &self.layers[index]),
                saved,
                g,
                self.batch_norms.get(&index),
                &mut no_sums,
                true,
                None,
            )?;
        }
        Ok(g)
    }
}

/// Every BatchNorm of `net` as the fixed map it applies under `normalization`.
pub(crate) fn fixed_batch_norms(
    net: &Net,
    normalization: Normalization<'_>,
) -> Result<HashMap<usize, BatchNormAffine>, TrainError> {
    let mut maps = HashMap::new();
    for (index, layer) in net.layers().iter().enumerate() {
        if let Layer::BatchNorm { .. } = layer {
            let (scale, shift) = net.batch_norm_affine(index, normalization)?;
            maps.insert(index, BatchNormAffine::fixed(&scale, &shift)?);
        }
    }
    Ok(maps)
}

impl InputGradient for InputGradientPass<'_> {
    fn logits_and_gradient(
        &self,
        x: &Tensor,
        target: Option<(&Tensor, AttackLoss)>,
    ) -> Result<(Tensor, Option<Tensor>), AttackError> {
        self.run(x, target)
            .map_err(|error| AttackError::Gradient(error.to_string()))
    }

    /// Every kernel of the pass treats samples apart (BatchNorm's maps are fixed), and each
    /// sample's objective gradient is its own row's, not a share of a batch mean.
    fn shards_batches(&self) -> bool {
        true
    }
}

impl InputGradientPass<'_> {
    fn run(
        &self,
        x: &Tensor,
        target: Option<(&Tensor, AttackLoss)>,
    ) -> Result<(Tensor, Option<Tensor>), TrainError> {
        let pass = self.forward(x)?;
        let Some((labels, loss)) = target else {
            return Ok((pass.logits, None));
        };
        let rows = pass.logits.to_vec2::<f32>()?;
        let labels = labels.to_vec1::<u32>()?;
        let gradient = summed_objective_gradient(&rows, &labels, loss)?;
        let g = Tensor::from_vec(gradient, pass.logits.dims(), x.device())?;
        let gradient = self.backward(pass.saved, g)?;
        Ok((pass.logits, Some(gradient)))
    }
}

/// The gradient in the logits of the attack objective summed over the rows, as autograd
/// differentiates `attack::attack_loss` (a margin's maximum passes gradient to every tied
/// class).
fn summed_objective_gradient(
    rows: &[Vec<f32>],
    labels: &[u32],
    loss: AttackLoss,
) -> Result<Vec<f32>, TrainError> {
    match loss {
        // Each row's own `softmax − onehot`, not a batch mean's share scaled back, so a row's
        // gradient is the same bits whatever batch or shard it is in.
        AttackLoss::CrossEntropy => Ok(cross_entropy_part_gradient(rows, labels, 1)?.1),
        AttackLoss::Margin => {
            let mut gradient = Vec::with_capacity(rows.len() * rows.first().map_or(0, Vec::len));
            for (row, &label) in rows.iter().zip(labels) {
                let label = label as usize;
                let other = crate::attack::largest_other_logit(row, label);
                gradient.extend(row.iter().enumerate().map(|(class, &z)| {
                    if class == label {
                        -1.0
                    } else if z == other {
                        1.0
                    } else {
                        0.0
                    }
                }));
            }
            Ok(gradient)
        }
    }
}
