#!/usr/bin/env python3
"""auto_LiRPA's CROWN-IBP training step, timed as `examples/bench_train.rs` times cthpo's (run by
hand, never by CI).

The same nets, batch, thread count, ε = 0.1 on random MNIST-shaped images and β = 1 as
`bench_train --method crown_ibp`: auto_LiRPA's `compute_bounds(method="CROWN-IBP")` (IBP for the
ReLUs' input bounds, CROWN's backward pass for the output), then the loss, backward, gradient
clipping and an Adam step, as auto_LiRPA's `examples/vision/cifar_training.py` trains.
- default: lower bounds of the margins `z_y − z_j` (specification `C`, `[B, K−1, K]`) and the
  robust cross-entropy of them, the loss cthpo computes;
- `--loss-fusion`: auto_LiRPA's loss fusion (the net wrapped in `CrossEntropyWrapper`, one
  upper bound of `Σ_j exp(z_j − z_y)` per sample, loss `mean(log(ub))`): a looser loss with one
  backward row per sample instead of K − 1, what auto_LiRPA's own training examples run.

    $PYTHON benches/lirpa_crown_ibp_step.py --arch cnn-small --batch 256 --threads 2 [--loss-fusion]
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
from auto_LiRPA import BoundedModule, BoundedTensor, CrossEntropyWrapper
from auto_LiRPA.operators import BoundExp
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
    ap.add_argument("--loss-fusion", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = build(args.arch)
    x = torch.rand(args.batch, 1, 28, 28)
    y = torch.arange(args.batch) % 10
    eps = 0.1
    if args.loss_fusion:
        model = BoundedModule(CrossEntropyWrapper(net), (x[:1], y[:1]),
                              bound_opts={"loss_fusion": True})
        exp_node = next(m for m in model.modules() if isinstance(m, BoundExp))
    else:
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
        if args.loss_fusion:
            _, upper = model.compute_bounds(x=(bounded, y), method="CROWN-IBP", bound_lower=False,
                                            bound_upper=True)
            loss = torch.mean(torch.log(upper) + exp_node.max_input)
        else:
            lower, _ = model.compute_bounds(x=(bounded,), C=spec, method="CROWN-IBP",
                                            bound_upper=False)
            padded = torch.cat((torch.zeros(lower.size(0), 1), lower), dim=1)
            loss = F.cross_entropy(-padded, torch.zeros(lower.size(0), dtype=torch.long))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        if step >= 3:
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    print(json.dumps({"arch": args.arch, "method": "crown_ibp", "loss_fusion": args.loss_fusion,
                      "batch": args.batch, "threads": args.threads, "torch": torch.__version__,
                      "ms_per_step": round(median * 1e3, 3),
                      "samples_per_s": round(args.batch / median, 1)}))


if __name__ == "__main__":
    main()
