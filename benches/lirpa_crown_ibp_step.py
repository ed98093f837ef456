#!/usr/bin/env python3
"""auto_LiRPA's CROWN-IBP training step, timed as `examples/bench_train.rs` times cthpo's (run by
hand, never by CI).

The same nets, batch, thread count, ε = 0.1 on random MNIST-shaped images and β = 1 as
`bench_train --method crown_ibp`: auto_LiRPA's `compute_bounds(method="CROWN-IBP")` (IBP for the
ReLUs' input bounds, CROWN's backward pass for the output), then the loss, backward, gradient
clipping and an Adam step, as auto_LiRPA's `examples/vision/cifar_training.py` trains without
loss fusion: lower bounds of the margins `z_y − z_j` (specification `C`, `[B, K−1, K]`) and the
robust cross-entropy of them, the loss cthpo computes.

    $PYTHON benches/lirpa_crown_ibp_step.py --arch cnn-small --batch 256 --threads 2
    (PYTHON: a Python with torch and auto_LiRPA installed)
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from auto_LiRPA import BoundedModule, BoundedTensor
from auto_LiRPA.perturbations import PerturbationLpNorm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pytorch_reference import build  # noqa: E402


def margin_spec(y, classes=10):
    """Rows `e_y − e_j` for every `j ≠ y`, `[B, K−1, K]`."""
    eye = torch.eye(classes)
    full = eye[y].unsqueeze(1) - eye.unsqueeze(0)
    keep = ~F.one_hot(y, classes).bool()
    return full[keep].reshape(len(y), classes - 1, classes)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="cnn-small")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = build(args.arch)
    x = torch.rand(args.batch, 1, 28, 28)
    y = torch.arange(args.batch) % 10
    eps = 0.1
    model = BoundedModule(net, x[:1])
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=5e-4)
    ptb = PerturbationLpNorm(norm=float("inf"), eps=eps, x_L=(x - eps).clamp(0, 1),
                             x_U=(x + eps).clamp(0, 1))
    bounded = BoundedTensor(x, ptb)
    spec = margin_spec(y)
    times = []
    for step in range(args.steps + 3):
        start = time.perf_counter()
        lower, _ = model.compute_bounds(x=(bounded,), C=spec, method="CROWN-IBP", bound_upper=False)
        padded = torch.cat((torch.zeros(lower.size(0), 1), lower), dim=1)
        loss = F.cross_entropy(-padded, torch.zeros(lower.size(0), dtype=torch.long))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        if step >= 3:
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    print(json.dumps({"arch": args.arch, "method": "crown_ibp",
                      "batch": args.batch, "threads": args.threads, "torch": torch.__version__,
                      "ms_per_step": round(median * 1e3, 3),
                      "samples_per_s": round(args.batch / median, 1)}))


if __name__ == "__main__":
    main()
