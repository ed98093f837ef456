//! Standard training: natural cross-entropy only, no robust term.

use super::{RobustLoss, StepContext, TrainingMethod};
use crate::train::TrainError;

/// Natural training (the robust loss is never requested: κ is 1 throughout).
pub(crate) struct Standard;

impl TrainingMethod for Standard {
    fn robust_loss(&self, context: &mut StepContext<'_>) -> Result<RobustLoss, TrainError> {
        let logits = context.net.forward_with(
            context.images,
            crate::model::Normalization::Batch(context.statistics),
        )?;
        Ok(RobustLoss {
            loss: candle_nn::loss::cross_entropy(&logits, context.labels)?,
            trace: None,
        })
    }
}
