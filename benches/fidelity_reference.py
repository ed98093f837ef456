#!/usr/bin/env python3
"""Multi-fidelity reference for cthpo: SMAC3's Hyperband facade and Optuna's TPE sampler with
the Hyperband pruner on the synthetic problems of `examples/bench_fidelity.rs`.

Run BY HAND only (never by CI; nothing in cthpo depends on it). The definitions below are the
contract shared with the Rust example; change them only together:

- budgets ("epochs") 1, 3 and 9, eta = 3; fidelity s = epochs / 9;
- f_s: the multi-fidelity Branin and Hartmann-6 of Kandasamy et al. (BOCA, 2017): Branin with
  b - 0.01 (1 - s), c - 0.1 (1 - s), t + 0.05 (1 - s); Hartmann-6 with alpha - 0.1 (1 - s);
- an evaluation at s observes f_s(x) + sigma (0.1 + 1 - s) N(0, 1), sigma = 1 (Branin) or
  0.05 (Hartmann-6);
- cost: SMAC evaluates a configuration at a budget from scratch (cost = the budget, as SMAC's
  target function trains); Optuna's trial reports every epoch and stops when pruned (cost = the
  epochs it ran); cthpo continues a checkpoint (cost = the epochs added);
- the incumbent is the configuration with the best observation at the highest budget evaluated
  so far; its regret is f_1(x) - min f_1 (no noise);
- the summary: median and quartiles (numpy.percentile) over seeds of the regret once the
  cumulative cost reaches 27, 54, 108, 216 and 300.

Set-up (a virtualenv outside the repository): `python3 -m venv ../venv-mf &&
../venv-mf/bin/pip install numpy optuna smac`. Run:

    ../venv-mf/bin/python benches/fidelity_reference.py --seeds 20 --budget 300

(`--first-seed N` runs seeds N, N+1, ...: `bench_fidelity` takes the same flag.)
"""
import argparse
import logging
import math
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from opt_reference import BRANIN_MIN, H6_A, H6_P, H_ALPHA, HARTMANN6_MIN  # noqa: E402

EPOCHS = 9
CHECKPOINTS = [27, 54, 108, 216, 300]


def branin_at(p, s):
    x1, x2, gap = p["x1"], p["x2"], 1.0 - s
    b = 5.1 / (4 * math.pi ** 2) - 0.01 * gap
    c = 5 / math.pi - 0.1 * gap
    t = 1 / (8 * math.pi) + 0.05 * gap
    return (x2 - b * x1 ** 2 + c * x1 - 6) ** 2 + 10 * (1 - t) * math.cos(x1) + 10


def hartmann6_at(p, s):
    x = np.asarray([p[f"x{i}"] for i in range(1, 7)], dtype=float)
    alpha = H_ALPHA - 0.1 * (1.0 - s)
    return float(-np.sum(alpha * np.exp(-np.sum(H6_A * (x - H6_P) ** 2, axis=1))))


PROBLEMS = {
    "branin": dict(fn=branin_at, bounds={"x1": (-5.0, 10.0), "x2": (0.0, 15.0)},
                   minimum=BRANIN_MIN, sigma=1.0),
    "hartmann6": dict(fn=hartmann6_at, bounds={f"x{i}": (0.0, 1.0) for i in range(1, 7)},
                      minimum=HARTMANN6_MIN, sigma=0.05),
}


class Budgeted(Exception):
    """The cumulative cost reached the budget."""


class Tracker:
    """Counts cost and keeps the regret curve by the shared incumbent rule."""

    def __init__(self, problem, seed, budget):
        self.problem, self.budget = problem, budget
        self.rng = np.random.default_rng(seed ^ 0xF1DE)
        self.cost, self.curve = 0.0, []
        self.best = {}  # epochs -> (observed, params)

    def evaluate(self, params, epochs, spent):
        if self.cost >= self.budget:
            raise Budgeted()
        s = epochs / EPOCHS
        sigma = self.problem["sigma"]
        y = self.problem["fn"](params, s) + sigma * (0.1 + 1 - s) * self.rng.standard_normal()
        if epochs not in self.best or y < self.best[epochs][0]:
            self.best[epochs] = (y, dict(params))
        self.cost += spent
        incumbent = self.best[max(self.best)][1]
        regret = self.problem["fn"](incumbent, 1.0) - self.problem["minimum"]
        self.curve.append((self.cost, regret))
        return float(y)


def run_optuna(problem, seed, budget):
    import optuna
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    tracker = Tracker(problem, seed, budget)
    study = optuna.create_study(
        direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.HyperbandPruner(min_resource=1, max_resource=EPOCHS,
                                              reduction_factor=3))

    def objective(trial):
        params = {k: trial.suggest_float(k, lo, hi) for k, (lo, hi) in problem["bounds"].items()}
        y = None
        for epoch in range(1, EPOCHS + 1):
            try:
                y = tracker.evaluate(params, epoch, 1)
            except Budgeted:
                trial.study.stop()
                raise optuna.TrialPruned()
            trial.report(y, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return y

    study.optimize(objective, n_trials=100000)
    return tracker.curve


def run_smac(problem, seed, budget):
    from ConfigSpace import ConfigurationSpace, Float
    from smac import HyperbandFacade, Scenario
    from smac.runhistory.dataclasses import TrialValue

    cs = ConfigurationSpace(seed=seed)
    for k, (lo, hi) in problem["bounds"].items():
        cs.add(Float(k, (lo, hi)))
    tracker = Tracker(problem, seed, budget)

    def target(config, seed: int = 0, budget: float = EPOCHS) -> float:
        raise RuntimeError("driven through ask/tell")

    with tempfile.TemporaryDirectory(prefix="smac_mf_") as tmp:
        scenario = Scenario(cs, deterministic=True, n_trials=100000, seed=seed, min_budget=1,
                            max_budget=EPOCHS, output_directory=os.path.join(tmp, "out"))
        smac = HyperbandFacade(scenario, target, overwrite=True, logging_level=logging.ERROR,
                               intensifier=HyperbandFacade.get_intensifier(scenario, eta=3))
        while True:
            info = smac.ask()
            epochs = int(round(info.budget))
            params = {k: info.config[k] for k in info.config.keys()}
            try:
                y = tracker.evaluate(params, epochs, epochs)
            except Budgeted:
                break
            smac.tell(info, TrialValue(cost=y))
    return tracker.curve


def summary(curves):
    cells = []
    for checkpoint in CHECKPOINTS:
        regrets = []
        for curve in curves:
            reached = [r for c, r in curve if c <= checkpoint]
            regrets.append(reached[-1] if reached else math.inf)
        q25, q50, q75 = np.percentile(np.asarray(regrets), [25, 50, 75])
        cells.append(f"{q50:.3e} [{q25:.1e}, {q75:.1e}]")
    return cells


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--functions", default="branin,hartmann6")
    ap.add_argument("--methods", default="smac_hyperband,optuna_tpe_hyperband")
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--budget", type=float, default=300)
    args = ap.parse_args()
    runners = {"smac_hyperband": run_smac, "optuna_tpe_hyperband": run_optuna}
    print("| function | method | " + " | ".join(f"cost {c}" for c in CHECKPOINTS) + " |")
    print("|---|---|" + "---|" * len(CHECKPOINTS))
    for name in args.functions.split(","):
        for method in args.methods.split(","):
            curves = [runners[method](PROBLEMS[name], seed, args.budget)
                      for seed in range(args.first_seed, args.first_seed + args.seeds)]
            print(f"| {name} | {method} | " + " | ".join(summary(curves)) + " |", flush=True)


if __name__ == "__main__":
    main()
