"""Reads and writes cthpo study databases with Optuna itself (used by tests/store.rs).

Usage:
DB is an SQLite file or a postgresql:// URL.

  optuna_check.py dump DB STUDY    print the study as Optuna sees it (JSON on stdout)
  optuna_check.py tell DB STUDY    add one COMPLETE trial with Optuna (params as in trial 0)
  optuna_check.py create DB        create a study "from-optuna" with Optuna in a new DB
"""

import json
import math
import sys

import optuna
from optuna.distributions import distribution_to_json
from optuna.study._constrained_optimization import _get_feasible_trials


def clean(x):
    """JSON-safe copy: non-finite floats become the strings "inf", "-inf", "nan"."""
    if isinstance(x, float) and not math.isfinite(x):
        return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if isinstance(x, dict):
        return {str(k): clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clean(v) for v in x]
    return x


def storage(db):
    """A storage URL as it is, else an SQLite file path."""
    if "://" in db:
        return db.replace("postgresql://", "postgresql+psycopg2://", 1)
    return "sqlite:///" + db


def dump(db, name):
    study = optuna.load_study(study_name=name, storage=storage(db))
    trials = []
    for t in study.get_trials(deepcopy=False):
        trials.append(
            {
                "number": t.number,
                "state": t.state.name,
                "params": t.params,
                "distributions": {k: json.loads(distribution_to_json(d)) for k, d in t.distributions.items()},
                "values": t.values,
                "user_attrs": t.user_attrs,
                "intermediate_values": t.intermediate_values,
                "has_start": t.datetime_start is not None,
                "has_complete": t.datetime_complete is not None,
                "constraints": t.constraints,
            }
        )
    out = {
        "directions": [d.name for d in study.directions],
        "user_attrs": study.user_attrs,
        "studies": [s.study_name for s in optuna.get_all_study_summaries(storage(db))],
        "trials": trials,
        "feasible_numbers": sorted(
            t.number
            for t in _get_feasible_trials(study.get_trials(states=[optuna.trial.TrialState.COMPLETE]))
        ),
    }
    if len(study.directions) == 1:
        out["best_number"] = study.best_trial.number
    else:
        out["best_numbers"] = sorted(t.number for t in study.best_trials)
    print(json.dumps(clean(out)))


def tell(db, name):
    study = optuna.load_study(study_name=name, storage=storage(db))
    first = study.get_trials(deepcopy=False)[0]
    trial = study.ask(fixed_distributions=first.distributions)
    trial.set_user_attr("written_by", "optuna")
    if len(study.directions) == 1:
        trial.report(0.25, 0)  # Optuna allows reports only in single-objective studies
    study.tell(trial, [0.5] * len(study.directions))
    print(json.dumps({"number": trial.number, "params": trial.params}))


def create(db):
    study = optuna.create_study(study_name="from-optuna", storage=storage(db), direction="maximize")

    def objective(trial):
        trial.suggest_float("lr", 1e-4, 1e-1, log=True)
        trial.suggest_int("width", 8, 64, step=8)
        trial.suggest_categorical("act", ["relu", "tanh"])
        trial.set_user_attr("natural_accuracy", 0.9)
        return 0.75

    study.optimize(objective, n_trials=2)
    print(json.dumps({"ok": True}))


def main():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    command, args = sys.argv[1], sys.argv[2:]
    {"dump": dump, "tell": tell, "create": create}[command](*args)


if __name__ == "__main__":
    main()
