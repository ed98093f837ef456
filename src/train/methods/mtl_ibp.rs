//! MTL-IBP (De Palma et al.): `α·L_IBP + (1−α)·L_PGD`, a convex combination of losses.

use super::{
    RobustLoss, StepContext, TrainingMethod, attack_point, ibp_margins, robust_cross_entropy,
};
use crate::bounds::Interval;
use crate::model::Normalization;
use crate::train::TrainError;

/// Convex combination of the IBP robust loss and the PGD loss.
pub(crate) struct MtlIbp;

impl TrainingMethod for MtlIbp {
    fn robust_loss(&self, context: &mut StepContext<'_>) -> Result<RobustLoss, TrainError> {
        let eps = context.schedule.eps;
        let config = context.config;
        let (alpha, factor, steps, step_size) = (
            config.mtl_ibp_alpha,
            config.mtl_ibp_eps_factor,
            config.pgd_steps,
            config.pgd_alpha,
        );
        let point = attack_point(context, eps * factor, steps, step_size)?;
        let adversarial_logits = context
            .net
            .forward_with(&point, Normalization::Batch(context.statistics))?;
        let adversarial = candle_nn::loss::cross_entropy(&adversarial_logits, context.labels)?;
        let input = Interval::linf_ball(context.images, eps)?;
        let (margins, trace) = ibp_margins(context, &input)?;
        let certified = robust_cross_entropy(&margins, context.labels)?;
        Ok(RobustLoss {
            loss: ((certified * alpha)? + (adversarial * (1.0 - alpha))?)?,
            trace: Some((trace, input)),
        })
    }
}
