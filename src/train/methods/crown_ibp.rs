//! CROWN-IBP training (Zhang et al.): margins `β·CROWN-IBP + (1−β)·IBP`, β falling to `end_beta`.

use super::{RobustLoss, StepContext, TrainingMethod, ibp_margins, robust_cross_entropy};
use crate::bounds::{Interval, crown_ibp_lower_bounds_from_trace, margin_spec};
use crate::model::Normalization;
use crate::train::TrainError;

/// CROWN-IBP with the β schedule; the CROWN pass is skipped once β reaches 0.
pub(crate) struct CrownIbp;

impl TrainingMethod for CrownIbp {
    fn robust_loss(&self, context: &mut StepContext<'_>) -> Result<RobustLoss, TrainError> {
        let input = Interval::linf_ball(context.images, context.schedule.eps)?;
        let (ibp, trace) = ibp_margins(context, &input)?;
        let beta = context.schedule.beta;
        let margins = if beta > 0.0 {
            let spec = margin_spec(context.labels, context.net.num_classes())?;
            let crown = crown_ibp_lower_bounds_from_trace(
                context.net,
                &trace,
                &spec,
                Normalization::Batch(context.statistics),
            )?;
            ((crown * beta)? + (ibp * (1.0 - beta))?)?
        } else {
            ibp
        };
        Ok(RobustLoss {
            loss: robust_cross_entropy(&margins, context.labels)?,
            trace: Some((trace, input)),
        })
    }
}
