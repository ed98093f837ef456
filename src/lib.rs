//! cthpo: Bayesian hyperparameter optimisation for certified training of neural networks.
//!
//! data → model → bounds/attack → train/eval form the embedded certified trainer (export writes
//! its networks for external verifiers); space → opt form
//! the optimiser; store, study and plot run and record studies. The module map, the flows and the
//! design decisions are in `docs/architecture.md`.

pub mod attack;
pub mod bounds;
pub mod cli;
pub mod data;
pub mod eval;
pub mod export;
pub mod kernels;
pub mod model;
pub mod opt;
pub mod pareto;
pub mod plot;
mod rng;
pub mod space;
pub mod store;
pub mod study;
pub mod train;
