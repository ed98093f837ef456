//! Configuration spaces: typed hyperparameters, conditions, YAML I/O, sampling and unit-cube encoding.
