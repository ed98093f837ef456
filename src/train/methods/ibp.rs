//! IBP training (Shi et al.): robust cross-entropy of interval margin bounds.

use super::{RobustLoss, StepContext, TrainingMethod, ibp_margins, robust_cross_entropy};
use crate::bounds::Interval;
use crate::train::TrainError;

/// Robust cross-entropy of IBP margins over the full ε-box.
pub(crate) struct Ibp;

impl TrainingMethod for Ibp {
    fn robust_loss(&self, context: &mut StepContext<'_>) -> Result<RobustLoss, TrainError> {
        let input = Interval::linf_ball(context.images, context.schedule.eps)?;
        let (margins, trace) = ibp_margins(context, &input)?;
        Ok(RobustLoss {
            loss: robust_cross_entropy(&margins, context.labels)?,
            trace: Some((trace, input)),
        })
    }
}
