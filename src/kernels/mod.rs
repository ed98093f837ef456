//! Fast CPU kernels for the hot paths of training and verification, as candle custom ops.

mod channel;
mod conv;

pub use channel::channel_affine;
pub use conv::{conv_transpose2d, conv2d};
