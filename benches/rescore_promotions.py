#!/usr/bin/env python3
"""Do a multi-fidelity study's rung scores rank the configurations it promotes to the full budget?

For every promotion into the last rung (a trial that continues the checkpoint of a trial
stopped at the rung below) of each given study directory, this re-scores the lower rung's
checkpoint on the *test* split with `cthpo verify` (a quick evaluation: IBP → CROWN-IBP →
CROWN → α-CROWN cascade, PGD of 10 steps and 1 restart) at several radii:

- `reached`: the radius the stored rung score used (`--rung-scoring reached`, each trial at
  the ε its own schedule had reached);
- `share`: the study's ε times the rung's share of the budget (rung epochs / --epochs), one
  radius for every trial of the rung (`--rung-scoring share`);
- `half`, `full`: half of, and the study's ε;

and scores the promoted trial's full-budget checkpoint on the test split at the study's ε.
It then prints, per scoring, Spearman's rank correlation of the lower rung's scores with the
full-budget scores (the study's own validation objective, and the test objective), pooled over
the studies after centring each study's scores (so differences between seeds and validation
splits do not count as agreement), and per study. Objectives are natural + PGD + certified
accuracy.

Run BY HAND (never by CI), from the repository, after `cargo build --release`:

    python3 benches/rescore_promotions.py --jobs 2 --rows rows.jsonl DIR [DIR ...]

`--rows FILE` appends each re-scored promotion to FILE as it is done and skips promotions
already in it, so an interrupted run continues, and a finished one prints again instantly.
Only the Python standard library is needed. Study directories must hold `cthpo.db` (SQLite)
and the trials' checkpoints.
"""
import argparse
import json
import os
import re
import sqlite3
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

SCORINGS = ["stored", "reached", "share", "half", "full"]


def promotions(directory):
    """The promotions into the last rung of the study in `directory`, as dicts."""
    db = sqlite3.connect(os.path.join(directory, "cthpo.db"))
    (studies,) = db.execute("select count(*) from studies").fetchone()
    if studies != 1:
        sys.exit(f"{directory}: cthpo.db holds {studies} studies; give one study per directory")
    spec = None
    for (value,) in db.execute(
        "select value_json from study_user_attributes where key = 'cthpo_spec'"
    ):
        spec = json.loads(value)
    if spec is None:
        sys.exit(f"{directory}: no cthpo study in cthpo.db")
    attrs = {}
    for trial_id, key, value in db.execute(
        "select trial_id, key, value_json from trial_user_attributes"
    ):
        attrs.setdefault(trial_id, {})[key] = json.loads(value)
    by_number = {
        number: attrs.get(trial_id, {})
        for trial_id, number in db.execute("select trial_id, number from trials")
    }
    rungs = [a["rung"] for a in by_number.values() if "rung" in a]
    if not rungs:
        return []
    top = max(rungs)
    found = []
    for number, high in sorted(by_number.items()):
        low = by_number.get(high.get("continues_trial"))
        if low is None or low.get("rung") != top - 1 or "objective" not in high:
            continue
        found.append(
            {
                "directory": directory,
                "low": high["continues_trial"],
                "high": number,
                "stored": low["objective"],
                "validation": high["objective"],
                "eps": spec["eps"],
                "reached_eps": low["rung_eps"],
                "share_eps": spec["eps"] * low["rung_epochs"] / spec["epochs"],
                "low_checkpoint": os.path.join(directory, low["checkpoint_path"]),
                "high_checkpoint": os.path.join(directory, high["checkpoint_path"]),
            }
        )
    return found


def test_objective(binary, checkpoint, eps, samples):
    """natural + PGD + certified accuracy of `checkpoint` on the test split at radius `eps`."""
    command = [binary, "verify", "--model", checkpoint, "--eps", repr(eps)]
    command += ["--samples", str(samples), "--method", "cascade"]
    command += ["--pgd-steps", "10", "--pgd-restarts", "1"]
    env = dict(os.environ, RAYON_NUM_THREADS="1")
    out = subprocess.run(command, capture_output=True, text=True, env=env, check=True).stdout
    total = 0.0
    for name in ("natural", "adversarial", "certified"):
        match = re.search(name + r" accuracy\s+([\d.]+) %", out)
        if match is None:
            sys.exit(f"unexpected output of {' '.join(command)}:\n{out}")
        total += float(match.group(1)) / 100
    return total


def rescore(row, binary, samples):
    radii = {
        "reached": row["reached_eps"],
        "share": row["share_eps"],
        "half": row["eps"] / 2,
        "full": row["eps"],
    }
    for name, eps in radii.items():
        row[name] = test_objective(binary, row["low_checkpoint"], eps, samples)
    row["test"] = test_objective(binary, row["high_checkpoint"], row["eps"], samples)
    return row


def ranks(values):
    order = sorted(range(len(values)), key=lambda i: values[i])
    result = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in order[i : j + 1]:
            result[k] = (i + j) / 2 + 1
        i = j + 1
    return result


def pearson(a, b):
    n = len(a)
    ma, mb = sum(a) / n, sum(b) / n
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    va = sum((x - ma) ** 2 for x in a)
    vb = sum((y - mb) ** 2 for y in b)
    return cov / (va * vb) ** 0.5 if va > 0 and vb > 0 else float("nan")


def spearman(a, b):
    return pearson(ranks(a), ranks(b))


def centred(values):
    mean = sum(values) / len(values)
    return [v - mean for v in values]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("directories", nargs="+")
    parser.add_argument("--bin", default="target/release/cthpo")
    parser.add_argument("--samples", type=int, default=2000, help="test images (default 2000)")
    parser.add_argument("--jobs", type=int, default=1, help="verify processes at once")
    parser.add_argument("--rows", help="JSON-lines file of re-scored promotions to reuse")
    args = parser.parse_args()

    done = {}
    if args.rows and os.path.exists(args.rows):
        with open(args.rows) as f:
            for line in f:
                row = json.loads(line)
                done[(row["directory"], row["high"])] = row
    todo, rows = [], []
    for directory in args.directories:
        for row in promotions(directory):
            key = (row["directory"], row["high"])
            if key in done:
                rows.append(done[key])
            else:
                todo.append(row)
    print(f"{len(rows) + len(todo)} promotions, {len(todo)} to re-score", file=sys.stderr)
    sink = open(args.rows, "a") if args.rows else None
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for row in pool.map(lambda r: rescore(r, args.bin, args.samples), todo):
            rows.append(row)
            if sink:
                sink.write(json.dumps(row) + "\n")
                sink.flush()
            print(f"re-scored {len(rows)}", file=sys.stderr)

    studies = sorted({r["directory"] for r in rows})
    print("| rung scoring | against | Spearman, pooled (centred per study) | per study |")
    print("|---|---|---|---|")
    for target, label in (("validation", "full-budget validation"), ("test", "full-budget test")):
        for scoring in SCORINGS:
            pooled_x, pooled_y, per_study = [], [], []
            for study in studies:
                group = [r for r in rows if r["directory"] == study]
                xs = [r[scoring] for r in group]
                ys = [r[target] for r in group]
                if len(group) >= 3:
                    per_study.append(f"{spearman(xs, ys):.2f}")
                pooled_x += centred(xs)
                pooled_y += centred(ys)
            print(
                f"| {scoring} | {label} | {spearman(pooled_x, pooled_y):+.2f} "
                f"({len(pooled_x)}) | {', '.join(per_study)} |"
            )
    xs, ys = [], []
    for study in studies:
        group = [r for r in rows if r["directory"] == study]
        xs += centred([r["validation"] for r in group])
        ys += centred([r["test"] for r in group])
    print(f"\nfull-budget validation against test: Spearman {spearman(xs, ys):+.2f} (pooled, centred)")


if __name__ == "__main__":
    main()
