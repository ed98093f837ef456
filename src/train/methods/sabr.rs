//! SABR (Müller et al.): IBP on a small box of radius `λ·ε` around an adversarial point.

use super::{
    RobustLoss, StepContext, TrainingMethod, ibp_margins, robust_cross_entropy, small_box,
};
use crate::train::TrainError;

/// Robust cross-entropy of IBP margins over SABR's small box (an unsound training surrogate).
pub(crate) struct Sabr;

impl TrainingMethod for Sabr {
    fn robust_loss(&self, context: &mut StepContext<'_>) -> Result<RobustLoss, TrainError> {
        let config = context.config;
        let (ratio, steps, alpha, factor) = (
            config.subselection_ratio,
            config.pgd_steps,
            config.pgd_alpha,
            config.pgd_eps_factor,
        );
        let input = small_box(context, ratio, steps, alpha, factor)?;
        let (margins, trace) = ibp_margins(context, &input)?;
        Ok(RobustLoss {
            loss: robust_cross_entropy(&margins, context.labels)?,
            trace: Some((trace, input)),
        })
    }
}
