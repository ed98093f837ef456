#!/usr/bin/env python3
"""PyTorch reference for `examples/bench_conv.rs` (run by hand, never by CI).

Times F.conv2d and the two halves of its backward (input and kernel gradient) on cnn7's
convolution shapes, median over --reps calls.

    $PYTHON benches/pytorch_conv_reference.py --batch 256 --threads 2

`$PYTHON` is a Python with torch (set-up: see benches/pytorch_reference.py).
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

LAYERS = [(1, 64, 28, 1), (64, 64, 28, 1), (64, 128, 28, 2), (128, 128, 14, 1), (128, 128, 14, 1)]


def median_ms(reps, run):
    run()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    total = [0.0, 0.0, 0.0]
    for index, (cin, cout, size, stride) in enumerate(LAYERS):
        x = torch.rand(args.batch, cin, size, size) * 2 - 1
        w = (torch.rand(cout, cin, 3, 3) * 2 - 1) * 0.1
        with torch.no_grad():
            y = F.conv2d(x, w, None, stride, 1)
        dy = torch.ones_like(y)
        conv_backward = torch.ops.aten.convolution_backward
        def backward(mask):
            conv_backward(dy, x, w, None, [stride, stride], [1, 1], [1, 1], False, [0, 0], 1, mask)
        with torch.no_grad():
            forward = median_ms(args.reps, lambda: F.conv2d(x, w, None, stride, 1))
            input_gradient = median_ms(args.reps, lambda: backward([True, False, False]))
            kernel_gradient = median_ms(args.reps, lambda: backward([False, True, False]))
        for i, ms in enumerate([forward, input_gradient, kernel_gradient]):
            total[i] += ms
        print(json.dumps({"layer": index, "shape": f"{cin}->{cout} {size}x{size} s{stride}",
                          "forward_ms": round(forward, 2), "input_gradient_ms": round(input_gradient, 2),
                          "kernel_gradient_ms": round(kernel_gradient, 2)}))
    print(json.dumps({"layer": "all", "forward_ms": round(total[0], 2), "input_gradient_ms": round(total[1], 2),
                      "kernel_gradient_ms": round(total[2], 2), "torch": torch.__version__}))


if __name__ == "__main__":
    main()
