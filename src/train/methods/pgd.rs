//! PGD adversarial training (Madry et al.): cross-entropy at the PGD point of the ε-ball.

use super::{RobustLoss, StepContext, TrainingMethod, attack_point};
use crate::model::Normalization;
use crate::train::TrainError;

/// Adversarial training against `pgd_steps` steps of size `pgd_alpha·ε`.
pub(crate) struct Pgd;

impl TrainingMethod for Pgd {
    fn robust_loss(&self, context: &mut StepContext<'_>) -> Result<RobustLoss, TrainError> {
        let eps = context.schedule.eps;
        let (steps, alpha) = (context.config.pgd_steps, context.config.pgd_alpha);
        let point = attack_point(context, eps, steps, alpha)?;
        let logits = context
            .net
            .forward_with(&point, Normalization::Batch(context.statistics))?;
        Ok(RobustLoss {
            loss: candle_nn::loss::cross_entropy(&logits, context.labels)?,
            trace: None,
        })
    }
}
