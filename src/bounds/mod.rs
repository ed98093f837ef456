//! Sound bound propagation (IBP, CROWN-IBP, CROWN) over a `model::Net` for margin specifications.
