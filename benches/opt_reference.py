#!/usr/bin/env python3
"""Sample-efficiency reference for cthpo's optimiser: SMAC3, Optuna GP / TPE and random search.

Run BY HAND only (never by CI; nothing in cthpo depends on it). cthpo's own Rust benchmark runs
the same three functions (`branin`, `hartmann6`, `mixed`, defined below) with the same seeds and
evaluation budget and prints the same summary, so the two can be compared line by line. The
definitions here are the contract: change them only together with the Rust side.

For every function x method x seed the script records the best-so-far regret
(best value seen so far minus the known minimum) after each evaluation, and the wall time of
the run. The summary gives the median and 25th / 75th percentiles over seeds
(numpy.percentile, linear interpolation) of the regret after 20 and after the last evaluation.

Set-up (a virtualenv outside the repository):

    python3 -m venv ../venv-ref                 # any folder outside the repository
    ../venv-ref/bin/pip install torch scipy numpy optuna smac safetensors
    export PYTHON=$PWD/../venv-ref/bin/python
    # SMAC >= 2.3 uses scikit-learn's random forest by default; older 2.x need pyrfr, which
    # builds from source: apt-get install -y swig build-essential first.

Run (the full run took roughly an hour on a 2-core virtual machine, most of it SMAC and GPSampler):

    $PYTHON benches/opt_reference.py \
        --functions branin,hartmann6,mixed --methods smac_hpo,optuna_gp,optuna_tpe,random \
        --seeds 20 --evals 50 --out benches/results/opt_reference.json
    $PYTHON benches/opt_reference.py --quick      # smoke run, a few seconds

The JSON is rewritten after every (function, method) pair, so an interrupted run keeps what it
finished.
"""
import argparse
import importlib.metadata
import json
import logging
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings

import numpy as np

# ----------------------------------------------------------------------------- functions

BRANIN_MIN = 0.397887357729738
HARTMANN6_MIN = -3.32236801141551

H_ALPHA = np.array([1.0, 1.2, 3.0, 3.2])
H3_A = np.array([[3.0, 10, 30], [0.1, 10, 35], [3.0, 10, 30], [0.1, 10, 35]])
H3_P = 1e-4 * np.array([[3689, 1170, 2673], [4699, 4387, 7470],
                        [1091, 8732, 5547], [381, 5743, 8828]])
H6_A = np.array([[10, 3, 17, 3.5, 1.7, 8], [0.05, 10, 17, 0.1, 8, 14],
                 [3, 3.5, 1.7, 10, 17, 8], [17, 8, 0.05, 10, 0.1, 14]])
H6_P = 1e-4 * np.array([[1312, 1696, 5569, 124, 8283, 5886], [2329, 4135, 8307, 3736, 1004, 9991],
                        [2348, 1451, 3522, 2883, 3047, 6650], [4047, 8828, 8732, 5743, 1091, 381]])


def hartmann(x, A, P):
    x = np.asarray(x, dtype=float)
    return float(-np.sum(H_ALPHA * np.exp(-np.sum(A * (x - P) ** 2, axis=1))))


def branin(p):
    x1, x2 = p["x1"], p["x2"]
    b, c = 5.1 / (4 * math.pi ** 2), 5 / math.pi
    return (x2 - b * x1 ** 2 + c * x1 - 6) ** 2 + 10 * (1 - 1 / (8 * math.pi)) * math.cos(x1) + 10


def hartmann6(p):
    return hartmann([p[f"x{i}"] for i in range(1, 7)], H6_A, H6_P)


def mixed_uv(lr, n):
    return (math.log10(lr) + 4) / 4, (n - 1) / 31


def mixed(p):
    u, v = mixed_uv(p["lr"], p["n"])
    kind = p["kind"]
    if kind == "a":
        offset = 0.5
    elif kind == "b":
        offset = 0.0
    else:
        offset = -0.3 + 2 * (p["extra"] - 0.7) ** 2
    return hartmann([u, v, p["x"]], H3_A, H3_P) + offset


def mixed_minimum(starts=64, seed=0):
    """Exact minimum of `mixed`: v only takes the 32 grid values (n - 1)/31, so the continuous
    Hartmann-3 minimum (-3.86278 at v = 0.5556) is not reachable. Kind c with extra = 0.7 is
    the best offset (-0.3) independently of (u, v, x), so only hartmann3 needs minimising."""
    from scipy.optimize import minimize
    rng = np.random.default_rng(seed)
    best, arg = math.inf, None
    for n in range(1, 33):
        v = (n - 1) / 31

        def f(z):
            # Value and analytic gradient in (u, x): exact gradients let L-BFGS-B converge to
            # full float64 precision instead of stalling on finite-difference noise.
            pt = np.array([z[0], v, z[1]])
            e = H_ALPHA * np.exp(-np.sum(H3_A * (pt - H3_P) ** 2, axis=1))
            g = np.sum(e[:, None] * 2 * H3_A * (pt - H3_P), axis=0)
            return -float(e.sum()), g[[0, 2]]
        # Random starts plus a coarse grid so no basin of this multimodal slice is missed.
        grid = [(a, b) for a in np.linspace(0.05, 0.95, 4) for b in np.linspace(0.05, 0.95, 4)]
        for z0 in list(rng.uniform(0, 1, size=(starts, 2))) + grid:
            r = minimize(f, z0, jac=True, method="L-BFGS-B", bounds=[(0, 1), (0, 1)],
                         options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 1000})
            if r.fun < best:
                best, arg = float(r.fun), (n, float(r.x[0]), float(r.x[1]))
    n, u, x = arg
    return best - 0.3, {"n": n, "u": u, "lr": 10 ** (4 * u - 4), "x": x, "kind": "c",
                        "extra": 0.7}


# A tiny search-space description shared by the ConfigSpace, Optuna and random-search
# back ends, so that the three see exactly the same space.
#   (name, kind, low, high, log)  kind: "float" | "int";  ("name", "cat", choices)
#   conditional entries carry cond=(parent, value): active only when parent == value.
def fspace(name, lo, hi, log=False, cond=None):
    return dict(name=name, kind="float", low=lo, high=hi, log=log, cond=cond)


PROBLEMS = {
    "branin": dict(fn=branin, space=[fspace("x1", -5.0, 10.0), fspace("x2", 0.0, 15.0)],
                   minimum=BRANIN_MIN),
    "hartmann6": dict(fn=hartmann6, space=[fspace(f"x{i}", 0.0, 1.0) for i in range(1, 7)],
                      minimum=HARTMANN6_MIN),
    "mixed": dict(fn=mixed, space=[
        fspace("lr", 1e-4, 1.0, log=True),
        dict(name="n", kind="int", low=1, high=32, log=False, cond=None),
        fspace("x", 0.0, 1.0),
        dict(name="kind", kind="cat", choices=["a", "b", "c"], cond=None),
        fspace("extra", 0.0, 1.0, cond=("kind", "c")),
    ], minimum=None),  # computed at start-up
}


# ----------------------------------------------------------------------------- methods

class Recorder:
    """Wraps the objective so every method's evaluations are counted the same way: in the
    order the objective is actually called, whatever the optimiser's own bookkeeping says."""

    def __init__(self, fn):
        self.fn, self.values = fn, []

    def __call__(self, params):
        y = float(self.fn(params))
        self.values.append(y)
        return y


def run_random(problem, rec, seed, evals):
    rng = np.random.default_rng(seed)
    for _ in range(evals):
        p = {}
        for s in problem["space"]:
            if s["cond"] is not None and p[s["cond"][0]] != s["cond"][1]:
                continue
            if s["kind"] == "cat":
                p[s["name"]] = s["choices"][int(rng.integers(len(s["choices"])))]
            elif s["kind"] == "int":
                p[s["name"]] = int(rng.integers(s["low"], s["high"] + 1))
            elif s["log"]:
                p[s["name"]] = float(math.exp(rng.uniform(math.log(s["low"]), math.log(s["high"]))))
            else:
                p[s["name"]] = float(rng.uniform(s["low"], s["high"]))
        rec(p)


def run_optuna(problem, rec, seed, evals, sampler_name):
    import optuna
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    if sampler_name == "gp":
        sampler = optuna.samplers.GPSampler(seed=seed)
    else:
        sampler = optuna.samplers.TPESampler(seed=seed)

    def objective(trial):
        # Define-by-run: a conditional parameter is suggested only when its parent allows it.
        p = {}
        for s in problem["space"]:
            if s["cond"] is not None and p[s["cond"][0]] != s["cond"][1]:
                continue
            if s["kind"] == "cat":
                p[s["name"]] = trial.suggest_categorical(s["name"], s["choices"])
            elif s["kind"] == "int":
                p[s["name"]] = trial.suggest_int(s["name"], s["low"], s["high"], log=s["log"])
            else:
                p[s["name"]] = trial.suggest_float(s["name"], s["low"], s["high"], log=s["log"])
        return rec(p)

    study = optuna.create_study(direction="minimize", sampler=sampler)
    study.optimize(objective, n_trials=evals)


def run_smac(problem, rec, seed, evals):
    from ConfigSpace import (Categorical, ConfigurationSpace, EqualsCondition, Float, Integer)
    from smac import HyperparameterOptimizationFacade, Scenario

    cs = ConfigurationSpace(seed=seed)
    hps = {}
    for s in problem["space"]:
        if s["kind"] == "cat":
            hp = Categorical(s["name"], s["choices"])
        elif s["kind"] == "int":
            hp = Integer(s["name"], (s["low"], s["high"]), log=s["log"])
        else:
            hp = Float(s["name"], (s["low"], s["high"]), log=s["log"])
        hps[s["name"]] = hp
        cs.add(hp)
    for s in problem["space"]:
        if s["cond"] is not None:
            cs.add(EqualsCondition(hps[s["name"]], hps[s["cond"][0]], s["cond"][1]))

    def target(config, seed: int = 0) -> float:
        # Inactive conditionals are absent from the configuration; the objective never reads
        # them in that case.
        p = {k: config[k] for k in config.keys()}
        for s in problem["space"]:
            if s["kind"] == "int" and s["name"] in p:
                p[s["name"]] = int(p[s["name"]])
        return rec(p)

    with tempfile.TemporaryDirectory(prefix="smac_ref_") as tmp:
        scenario = Scenario(cs, deterministic=True, n_trials=evals, seed=seed,
                            output_directory=os.path.join(tmp, "out"))
        smac = HyperparameterOptimizationFacade(scenario, target, overwrite=True,
                                                logging_level=logging.ERROR)
        smac.optimize()


def latency(histories=(50, 200, 500), repeats=3):
    """Optuna GPSampler's ask() time with a history of random trials on the 12-parameter space
    `examples/bench_opt.rs --latency` uses (4 log floats, 4 floats, 2 ints, 2 categoricals)."""
    import optuna
    from optuna.distributions import (CategoricalDistribution, FloatDistribution,
                                      IntDistribution)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    dists = {}
    for i in range(4):
        dists[f"log{i}"] = FloatDistribution(1e-5, 1.0, log=True)
        dists[f"lin{i}"] = FloatDistribution(0.0, 1.0)
    dists["steps"] = IntDistribution(1, 50)
    dists["width"] = IntDistribution(8, 512, log=True)
    dists["opt"] = CategoricalDistribution(["adam", "adamw", "radam"])
    dists["sched"] = CategoricalDistribution(["step", "cosine"])
    rows = []
    for n in histories:
        times = []
        for r in range(repeats):
            rng = np.random.default_rng(1000 * n + r)
            study = optuna.create_study(direction="minimize",
                                        sampler=optuna.samplers.GPSampler(seed=r))
            for _ in range(n):
                params = {}
                for k, d in dists.items():
                    if isinstance(d, CategoricalDistribution):
                        params[k] = d.choices[rng.integers(len(d.choices))]
                    elif isinstance(d, IntDistribution):
                        params[k] = int(rng.integers(d.low, d.high + 1))
                    elif d.log:
                        params[k] = float(np.exp(rng.uniform(np.log(d.low), np.log(d.high))))
                    else:
                        params[k] = float(rng.uniform(d.low, d.high))
                study.add_trial(optuna.trial.create_trial(params=params, distributions=dists,
                                                          value=float(rng.uniform())))
            start = time.perf_counter()
            # The GP is fitted and the acquisition optimised inside ask() when the search space
            # is given up front.
            study.ask(fixed_distributions=dists)
            times.append(time.perf_counter() - start)
        rows.append((n, 1e3 * statistics.median(times)))
    print("| trials in history | Optuna GPSampler median ms per ask |\n|---|---|")
    for n, ms in rows:
        print(f"| {n} | {ms:.1f} |")


METHODS = {
    "smac_hpo": run_smac,
    "optuna_gp": lambda pr, rec, seed, ev: run_optuna(pr, rec, seed, ev, "gp"),
    "optuna_tpe": lambda pr, rec, seed, ev: run_optuna(pr, rec, seed, ev, "tpe"),
    "random": run_random,
}


# ----------------------------------------------------------------------------- driver

def versions():
    out = {"python": platform.python_version()}
    for pkg in ["smac", "ConfigSpace", "optuna", "torch", "numpy", "scipy", "scikit-learn"]:
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def regret_curve(values, minimum, evals):
    best = np.minimum.accumulate(np.asarray(values, dtype=float)) - minimum
    if len(best) < evals:
        # An optimiser that stops early keeps its last best for the remaining budget.
        best = np.concatenate([best, np.full(evals - len(best), best[-1])])
    return best[:evals]


def quartiles(a):
    q25, q50, q75 = np.percentile(np.asarray(a, dtype=float), [25, 50, 75])
    return {"median": float(q50), "q25": float(q25), "q75": float(q75)}


def summarise(curves, walls, checkpoints):
    arr = np.asarray(curves)
    s = {f"regret_at_{c}": quartiles(arr[:, c - 1]) for c in checkpoints}
    s["wall_s_per_run"] = quartiles(walls)
    s["wall_s_per_run"]["mean"] = float(np.mean(walls))
    return s


def markdown(results, checkpoints):
    cols = [f"regret@{c} median [q25, q75]" for c in checkpoints]
    lines = ["| function | method | " + " | ".join(cols) + " | wall s/run (median) |",
             "|---|---|" + "---|" * len(cols) + "---|"]
    for fname, by_method in results.items():
        for mname, r in by_method.items():
            cells = []
            for c in checkpoints:
                q = r["summary"][f"regret_at_{c}"]
                cells.append(f"{q['median']:.3g} [{q['q25']:.3g}, {q['q75']:.3g}]")
            w = r["summary"]["wall_s_per_run"]["median"]
            lines.append(f"| {fname} | {mname} | " + " | ".join(cells) + f" | {w:.2f} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--functions", default="branin,hartmann6,mixed")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--seeds", type=int, default=20, help="seeds 0..N-1")
    ap.add_argument("--evals", type=int, default=50)
    ap.add_argument("--out", default=None,
                    help="JSON path (default benches/results/opt_reference.json, or a temp file "
                         "with --quick)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 seeds x 12 evaluations")
    ap.add_argument("--latency", action="store_true",
                    help="time Optuna GPSampler's ask() with 50, 200, 500 trials of history")
    args = ap.parse_args()
    if args.latency:
        latency()
        return
    if args.quick:
        args.seeds, args.evals = 2, 12
    out = args.out or (os.path.join(tempfile.gettempdir(), "opt_reference_quick.json")
                       if args.quick else "benches/results/opt_reference.json")
    functions = [f for f in args.functions.split(",") if f]
    methods = [m for m in args.methods.split(",") if m]
    for f in functions:
        if f not in PROBLEMS:
            sys.exit(f"unknown function {f}; known: {', '.join(PROBLEMS)}")
    for m in methods:
        if m not in METHODS:
            sys.exit(f"unknown method {m}; known: {', '.join(METHODS)}")
    checkpoints = sorted({min(20, args.evals), args.evals})

    # SMAC and Optuna warn about things that are by design here (e.g. GPSampler sampling the
    # conditional `extra` independently); keep the log readable.
    warnings.filterwarnings("ignore")

    minima = {"branin": BRANIN_MIN, "hartmann6": HARTMANN6_MIN}
    mixed_arg = None
    if "mixed" in functions:
        minima["mixed"], mixed_arg = mixed_minimum()
        print(f"mixed minimum = {minima['mixed']!r} at {mixed_arg}", flush=True)
        assert abs(mixed(mixed_arg) - minima["mixed"]) < 1e-12

    try:
        import torch
        torch_threads = torch.get_num_threads()
    except ImportError:
        torch_threads = None
    doc = {
        "description": "best-so-far regret (best value so far minus known minimum) after each "
                       "evaluation; summary quantiles over seeds via numpy.percentile (linear)",
        "versions": versions(),
        "torch_threads": torch_threads,
        "seeds": list(range(args.seeds)),
        "evals": args.evals,
        "checkpoints": checkpoints,
        "minima": {f: minima[f] for f in functions},
        "mixed_argmin": mixed_arg,
        "results": {},
    }
    print(json.dumps(doc["versions"]), flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)

    for fname in functions:
        problem = PROBLEMS[fname]
        doc["results"][fname] = {}
        for mname in methods:
            curves, walls, n_evals = [], [], []
            for seed in range(args.seeds):
                rec = Recorder(problem["fn"])
                t0 = time.perf_counter()
                METHODS[mname](problem, rec, seed, args.evals)
                walls.append(time.perf_counter() - t0)
                n_evals.append(len(rec.values))
                curve = regret_curve(rec.values, minima[fname], args.evals)
                # A negative regret would mean the known minimum is wrong.
                assert curve[-1] > -1e-9, (fname, mname, seed, curve[-1])
                curves.append(curve.tolist())
                print(f"{fname:10s} {mname:11s} seed {seed:2d}: regret@{args.evals} "
                      f"{curve[-1]:.4g}  ({len(rec.values)} evals, {walls[-1]:.1f} s)", flush=True)
            doc["results"][fname][mname] = {
                "regret": curves, "wall_s": walls, "n_evals": n_evals,
                "summary": summarise(curves, walls, checkpoints)}
            with open(out, "w") as fh:
                json.dump(doc, fh, indent=1)
    print()
    print(markdown(doc["results"], checkpoints))
    print(f"\nwritten {out}")


if __name__ == "__main__":
    main()
