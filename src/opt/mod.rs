//! The Bayesian optimiser behind an ask/tell API: initial design, surrogates, acquisition.
