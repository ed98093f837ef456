#!/usr/bin/env python3
"""auto_LiRPA timings of a CROWN-IBP certification pass (run by hand, never by CI).

The reference for cthpo's certification timings: the same nets (cnn-small, cnn7 on MNIST
1x28x28), the same specification (margins C = e_y - e_j for every j != y), the same l_inf box
B(x, eps) clipped to [0, 1], and CROWN-IBP (interval bounds for every intermediate layer, one
CROWN backward pass from the margins). Only the lower bounds are computed, which is all
certification needs (a sample is certified when every margin's lower bound is > 0).

Times `BoundedModule.compute_bounds` alone (the module is built once, outside the timing),
after warm-up, as the median over --repeats calls on one batch; once per auto_LiRPA conv mode
('matrix', as in fixtures/make_bounds_fixtures.py, and auto_LiRPA's default 'patches'), and
checks that both modes give the same bounds. Prints one JSON object on stdout.

Set-up (a virtualenv outside the repository; auto_LiRPA 0.7.x from its source repository,
PyPI's auto-lirpa is too old for torch 2.x; it wants torch < 2.9):

    python3 -m venv ../venv-ref                 # any folder outside the repository
    ../venv-ref/bin/pip install "torch==2.8.0" safetensors numpy
    ../venv-ref/bin/pip install --no-deps /path/to/auto_LiRPA
    ../venv-ref/bin/pip install appdirs graphviz        # what its import needs beyond torch
    export PYTHON=$PWD/../venv-ref/bin/python

Run:

    $PYTHON benches/lirpa_certify_reference.py --arch cnn-small
    $PYTHON benches/lirpa_certify_reference.py --arch cnn7 --threads 2 \
        --weights net.safetensors --images x.npy --labels y.npy --eps 0.1
"""
import argparse
import importlib.metadata
import json
import statistics
import sys
import time
import warnings

import numpy as np
import torch
import torch.nn as nn

DEFAULT_BATCH = {"cnn-small": 256, "cnn7": 64}


def build(arch):
    """The nets of benches/pytorch_reference.py, as nn.Sequential so that safetensors files
    written by cthpo (keys `0.weight`, `0.bias`, `1.running_mean`, ...) load directly."""
    if arch == "cnn-small":
        return nn.Sequential(nn.Conv2d(1, 16, 4, 2, 1), nn.ReLU(), nn.Flatten(),
                             nn.Linear(3136, 100), nn.ReLU(), nn.Linear(100, 10))
    if arch == "cnn7":
        layers, c = [], 1
        for o, s in [(64, 1), (64, 1), (128, 2), (128, 1), (128, 1)]:
            layers += [nn.Conv2d(c, o, 3, s, 1), nn.BatchNorm2d(o), nn.ReLU()]
            c = o
        layers += [nn.Flatten(), nn.Linear(128 * 14 * 14, 512), nn.BatchNorm1d(512), nn.ReLU(),
                   nn.Linear(512, 10)]
        return nn.Sequential(*layers)
    sys.exit(f"unknown arch {arch}")


def spec_matrix(labels, k):
    """C [B, k-1, k]: row r is e_y - e_j for the r-th j != y in increasing order."""
    b = labels.shape[0]
    eye = torch.eye(k)
    rows = eye[labels].unsqueeze(1) - eye.unsqueeze(0)  # [B, k, k]; row y is all zero
    keep = torch.ones(b, k, dtype=torch.bool)
    keep[torch.arange(b), labels] = False
    return rows[keep].view(b, k - 1, k)


def load_inputs(args, batch, gen):
    if args.images:
        x = torch.from_numpy(np.load(args.images).astype(np.float32))
        if args.labels is None:
            sys.exit("--images needs --labels")
        y = torch.from_numpy(np.load(args.labels).astype(np.int64)).reshape(-1)
        if x.shape[0] < batch or y.shape[0] < x.shape[0]:
            sys.exit(f"need at least {batch} images and as many labels, got {x.shape[0]} / {y.shape[0]}")
        x, y = x[:batch].reshape(batch, 1, 28, 28), y[:batch]
        if x.min() < 0 or x.max() > 1:
            sys.exit("images must lie in [0, 1]")
        return x, y
    return torch.rand(batch, 1, 28, 28, generator=gen), torch.randint(0, 10, (batch,), generator=gen)


def time_mode(net, x, xl, xu, C, conv_mode, warmup, repeats):
    from auto_LiRPA import BoundedModule, BoundedTensor
    from auto_LiRPA.perturbations import PerturbationLpNorm
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lm = BoundedModule(net, torch.zeros_like(x), bound_opts={"conv_mode": conv_mode},
                           device="cpu")
    lm.eval()
    build_s = time.perf_counter() - t0
    bx = BoundedTensor(x, PerturbationLpNorm(norm=float("inf"), x_L=xl, x_U=xu))
    times, lower = [], None
    with torch.no_grad():
        for i in range(warmup + repeats):
            t0 = time.perf_counter()
            lower, _ = lm.compute_bounds(x=(bx,), C=C, method="CROWN-IBP", bound_upper=False)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return lower, {"build_s": round(build_s, 4), "median_s": round(med, 5),
                   "min_s": round(min(times), 5), "max_s": round(max(times), 5),
                   "samples_per_s": round(x.shape[0] / med, 1), "repeats": repeats,
                   "certified": int((lower > 0).all(dim=1).sum())}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="cnn-small", choices=sorted(DEFAULT_BATCH))
    ap.add_argument("--weights", help="safetensors file with nn.Sequential keys; default: "
                                      "seeded random init")
    ap.add_argument("--images", help=".npy float32 N x 1 x 28 x 28 in [0, 1]; default random")
    ap.add_argument("--labels", help=".npy integer labels for --images")
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--batch", type=int, help="default 256 for cnn-small, 64 for cnn7")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--conv-modes", default="matrix,patches")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.repeats < 5:
        sys.exit("--repeats must be >= 5")
    batch = args.batch or DEFAULT_BATCH[args.arch]
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed + 1)

    net = build(args.arch)
    if args.weights:
        from safetensors.torch import load_file
        net.load_state_dict(load_file(args.weights), strict=True)
    # BatchNorm uses its running statistics: certification is of the deployed (eval) net.
    net.eval()

    x, y = load_inputs(args, batch, gen)
    xl, xu = (x - args.eps).clamp(0, 1), (x + args.eps).clamp(0, 1)
    with torch.no_grad():
        logits = net(x)
    C = spec_matrix(y, logits.shape[1])
    clean_margin = torch.einsum("bij,bj->bi", C, logits)

    out = {"arch": args.arch, "batch": batch, "threads": args.threads, "eps": args.eps,
           "method": "CROWN-IBP", "bound": "lower only",
           "weights": args.weights or f"random init (seed {args.seed})",
           "images": args.images or f"uniform random (seed {args.seed + 1})",
           "clean_accuracy": float((logits.argmax(1) == y).float().mean()),
           "torch": torch.__version__, "auto_LiRPA": importlib.metadata.version("auto_LiRPA"),
           "modes": {}}
    lowers = {}
    for mode in [m for m in args.conv_modes.split(",") if m]:
        try:
            lowers[mode], out["modes"][mode] = time_mode(net, x, xl, xu, C, mode, args.warmup,
                                                         args.repeats)
        except Exception as e:  # noqa: BLE001 - report a mode auto_LiRPA cannot run, go on
            out["modes"][mode] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
            continue
        # The clean point lies in the box, so a sound lower bound cannot exceed its margin.
        slack = float((lowers[mode] - clean_margin).max())
        out["modes"][mode]["max_lower_minus_clean_margin"] = slack
        assert slack <= 1e-4 * (1 + float(clean_margin.abs().max())), f"{mode}: unsound bound"
    if len(lowers) > 1:
        ref = next(iter(lowers.values()))
        out["max_abs_diff_between_modes"] = max(float((v - ref).abs().max())
                                                for v in lowers.values())
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
