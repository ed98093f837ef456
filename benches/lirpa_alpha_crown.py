#!/usr/bin/env python3
"""auto_LiRPA's alpha-CROWN (CROWN-Optimized) on a cthpo checkpoint, for comparison with
`cthpo verify --method alpha-crown` (by hand, never CI).

Bounds every margin `z_y - z_j` of the first --samples MNIST test images that the network
classifies correctly, over the l_inf box B(x, eps) clipped to [0, 1], with CROWN-Optimized
(conv_mode 'matrix', --iterations Adam steps at lr 0.5, intermediate bounds fixed, each batch
stopped early once every sample is certified). Prints one JSON object: natural accuracy,
samples certified, and the seconds spent in compute_bounds.

Set-up: the virtualenv of benches/lirpa_certify_reference.py (torch 2.8, auto_LiRPA 0.7.x).
    $PYTHON benches/lirpa_alpha_crown.py --model run/model.safetensors \
        --data-dir DIR --samples 200 --eps 0.1 --iterations 20
"""
import argparse
import json
import os
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lirpa_certify_reference import spec_matrix  # noqa: E402
from lirpa_verify_checkpoint import load_net_and_test_images  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="safetensors weights (model.safetensors)")
    ap.add_argument("--arch", default="cnn-small", choices=["cnn-small", "cnn7"])
    ap.add_argument("--data-dir", required=True, help="MNIST IDX files")
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from auto_LiRPA import BoundedModule, BoundedTensor
    from auto_LiRPA.perturbations import PerturbationLpNorm
    from auto_LiRPA.utils import stop_criterion_min

    net, x_all, labels = load_net_and_test_images(args)
    with torch.no_grad():
        correct = net(x_all).argmax(1) == labels
    chosen = torch.nonzero(correct).flatten()
    certified, seconds = 0, 0.0
    opts = {"conv_mode": "matrix",
            "optimize_bound_args": {"iteration": args.iterations, "lr_alpha": 0.5,
                                    "stop_criterion_func": stop_criterion_min(0)}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = BoundedModule(net, x_all[:1], bound_opts=opts, device="cpu")
        model.eval()
        for begin in range(0, chosen.numel(), args.batch):
            index = chosen[begin:begin + args.batch]
            x, y = x_all[index], labels[index]
            box = PerturbationLpNorm(norm=float("inf"), x_L=(x - args.eps).clamp(0, 1),
                                     x_U=(x + args.eps).clamp(0, 1))
            start = time.perf_counter()
            lower, _ = model.compute_bounds(x=(BoundedTensor(x, box),), C=spec_matrix(y, 10),
                                            method="CROWN-Optimized", bound_upper=False)
            seconds += time.perf_counter() - start
            certified += int((lower > 0).all(1).sum())
    print(json.dumps({
        "model": args.model, "samples": args.samples, "eps": args.eps,
        "iterations": args.iterations, "correct": int(correct.sum()),
        "alpha_crown_certified": certified, "seconds": round(seconds, 2),
    }, indent=1))


if __name__ == "__main__":
    main()
