//! SQLite trial storage in Optuna's RDB schema (v12), committed as each trial changes state.
