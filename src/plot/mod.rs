//! Charts from stored trials: Pareto fronts of certified vs natural accuracy and optimisation history.
