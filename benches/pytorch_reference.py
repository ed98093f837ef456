#!/usr/bin/env python3
"""PyTorch reference timings for `examples/bench_train.rs` (run by hand, never by CI).

Times the same training steps cthpo's bench_train times (same nets, batch, thread count):
`standard` (cross-entropy) and `ibp` (interval bound propagation with the margin spec folded
into the last layer, robust cross-entropy), each as forward + loss + backward + Adam step.

    python3 -m venv ../venv-ref && ../venv-ref/bin/pip install torch   # any folder outside the repository
    export PYTHON=$PWD/../venv-ref/bin/python
    $PYTHON benches/pytorch_reference.py --arch cnn-small --method ibp --batch 256 --threads 2
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def build(arch):
    conv = lambda i, o, k, s, p: nn.Conv2d(i, o, k, s, p)
    if arch == "cnn-small":
        return nn.Sequential(conv(1, 16, 4, 2, 1), nn.ReLU(), nn.Flatten(), nn.Linear(3136, 100), nn.ReLU(), nn.Linear(100, 10))
    if arch == "cnn7":
        layers, c = [], 1
        for o, s in [(64, 1), (64, 1), (128, 2), (128, 1), (128, 1)]:
            layers += [conv(c, o, 3, s, 1), nn.BatchNorm2d(o), nn.ReLU()]
            c = o
        layers += [nn.Flatten(), nn.Linear(128 * 14 * 14, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, 10)]
        return nn.Sequential(*layers)
    raise SystemExit(f"unknown arch {arch}")


def ibp_loss(net, x, y, eps):
    lower, upper = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    layers = list(net)
    for layer in layers[:-1]:
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            c, r = (upper + lower) / 2, (upper - lower) / 2
            if isinstance(layer, nn.Conv2d):
                c = layer(c)
                r = F.conv2d(r, layer.weight.abs(), None, layer.stride, layer.padding)
            else:
                c, r = layer(c), F.linear(r, layer.weight.abs())
            lower, upper = c - r, c + r
        elif isinstance(layer, (nn.BatchNorm2d, nn.BatchNorm1d)):
            # Batch statistics of the clean batch are what training uses; here the bound's own
            # centre stands in, which costs the same.
            c, r = (upper + lower) / 2, (upper - lower) / 2
            scale = layer.weight / torch.sqrt(layer.running_var + layer.eps)
            shape = (1, -1) + (1,) * (c.dim() - 2)
            c = layer(c)
            r = r * scale.abs().view(shape)
            lower, upper = c - r, c + r
        elif isinstance(layer, nn.ReLU):
            lower, upper = lower.relu(), upper.relu()
        else:
            lower, upper = layer(lower), layer(upper)
    last = layers[-1]
    eye = torch.eye(10)
    spec = (eye[y].unsqueeze(1) - eye.unsqueeze(0))  # [B, 10, 10], row y is zero
    w = spec @ last.weight  # [B, 10, in]
    b = spec @ last.bias
    c, r = (upper + lower) / 2, (upper - lower) / 2
    margin = (w @ c.unsqueeze(2)).squeeze(2) + b - (w.abs() @ r.unsqueeze(2)).squeeze(2)
    return F.cross_entropy(-margin, y)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="cnn-small")
    ap.add_argument("--method", default="ibp", choices=["standard", "ibp"])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = build(args.arch)
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=5e-4)
    x = torch.rand(args.batch, 1, 28, 28)
    y = torch.arange(args.batch) % 10
    times = []
    for step in range(args.steps + 3):
        start = time.perf_counter()
        if args.method == "standard":
            loss = F.cross_entropy(net(x), y)
        else:
            loss = 0.5 * F.cross_entropy(net(x), y) + 0.5 * ibp_loss(net, x, y, 0.1)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 10.0)
        opt.step()
        if step >= 3:
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    print(json.dumps({"arch": args.arch, "method": args.method, "batch": args.batch, "threads": args.threads,
                      "torch": torch.__version__, "ms_per_step": round(median * 1e3, 3),
                      "samples_per_s": round(args.batch / median, 1)}))


if __name__ == "__main__":
    main()
