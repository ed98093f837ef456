//! The embedded certified trainer: schedules, methods, regularisers, optimisers and the epoch loop.
