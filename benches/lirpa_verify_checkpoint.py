#!/usr/bin/env python3
"""Independent check of a cthpo checkpoint's certified accuracy with auto_LiRPA (by hand, never CI).

Loads `model.safetensors` of a `cthpo train --out DIR` run (or any safetensors file with
`nn.Sequential` keys) into PyTorch, reads the first --samples MNIST test images from the IDX
files in --data-dir, and bounds every margin `z_y - z_j` over the l_inf box B(x, eps) clipped to
[0, 1] with auto_LiRPA's IBP, CROWN-IBP and CROWN (conv_mode 'matrix'). Prints one JSON object:
natural accuracy, how many samples each method certifies (every margin's lower bound > 0, and
the sample classified correctly; with --alpha, how many more alpha-CROWN certifies among the
rest), and how many any of them certifies (the figure to compare with
`cthpo verify --method cascade`, whose PGD stage only removes samples no verifier certifies).

Set-up: the virtualenv of benches/lirpa_certify_reference.py (torch 2.8, auto_LiRPA 0.7.x).
    $PYTHON benches/lirpa_verify_checkpoint.py --model run/model.safetensors \
        --data-dir DIR --samples 1000 --eps 0.1
"""
import argparse
import json
import os
import struct
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lirpa_certify_reference import build, spec_matrix  # noqa: E402


def read_idx(path):
    """An IDX file (optionally gzip-compressed) as a uint8 tensor of its stated shape."""
    import gzip
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    _, _, kind, dims = struct.unpack(">BBBB", data[:4])
    if kind != 0x08:
        sys.exit(f"{path}: not an unsigned-byte IDX file")
    shape = struct.unpack(">" + "I" * dims, data[4:4 + 4 * dims])
    return torch.frombuffer(bytearray(data[4 + 4 * dims:]), dtype=torch.uint8).reshape(shape)


def find(data_dir, stem):
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        path = os.path.join(data_dir, name)
        if os.path.exists(path):
            return path
    sys.exit(f"{data_dir}: no {stem}[.gz]")


def load_net_and_test_images(args):
    """The checkpoint's network (eval mode) and the first --samples test images in [0, 1] with
    their labels."""
    from safetensors.torch import load_file

    net = build(args.arch)
    net.load_state_dict(load_file(args.model))
    net.eval()
    images = read_idx(find(args.data_dir, "t10k-images-idx3-ubyte"))[: args.samples]
    labels = read_idx(find(args.data_dir, "t10k-labels-idx1-ubyte"))[: args.samples].long()
    return net, images.float().div(255.0).unsqueeze(1), labels


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="safetensors weights (model.safetensors)")
    ap.add_argument("--arch", default="cnn-small", choices=["cnn-small", "cnn7"])
    ap.add_argument("--data-dir", required=True, help="MNIST IDX files")
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--batch", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--alpha", action="store_true",
                    help="also run alpha-CROWN (CROWN-Optimized) on the samples the others leave")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from auto_LiRPA import BoundedModule, BoundedTensor
    from auto_LiRPA.perturbations import PerturbationLpNorm

    net, x_all, labels = load_net_and_test_images(args)

    methods = ["IBP", "CROWN-IBP", "CROWN"]
    certified = {m: torch.zeros(0, dtype=torch.bool) for m in methods}
    correct_all = torch.zeros(0, dtype=torch.bool)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = BoundedModule(net, x_all[:1], bound_opts={"conv_mode": "matrix"}, device="cpu")
        model.eval()
        for begin in range(0, x_all.shape[0], args.batch):
            x = x_all[begin:begin + args.batch]
            y = labels[begin:begin + args.batch]
            with torch.no_grad():
                correct = net(x).argmax(1) == y
            correct_all = torch.cat([correct_all, correct])
            box = PerturbationLpNorm(norm=float("inf"), x_L=(x - args.eps).clamp(0, 1),
                                     x_U=(x + args.eps).clamp(0, 1))
            bounded = BoundedTensor(x, box)
            C = spec_matrix(y, 10)
            for method in methods:
                with torch.no_grad():
                    lower, _ = model.compute_bounds(x=(bounded,), C=C, method=method,
                                                    bound_upper=False)
                certified[method] = torch.cat([certified[method], (lower > 0).all(1) & correct])
    anyone = certified["IBP"] | certified["CROWN-IBP"] | certified["CROWN"]
    alpha_certified = None
    if args.alpha:
        left = torch.nonzero(~anyone & correct_all).flatten()
        alpha_certified = 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for begin in range(0, left.numel(), args.batch):
                index = left[begin:begin + args.batch]
                x, y = x_all[index], labels[index]
                model = BoundedModule(net, x, bound_opts={"conv_mode": "matrix"}, device="cpu")
                model.eval()
                box = PerturbationLpNorm(norm=float("inf"), x_L=(x - args.eps).clamp(0, 1),
                                         x_U=(x + args.eps).clamp(0, 1))
                lower, _ = model.compute_bounds(x=(BoundedTensor(x, box),), C=spec_matrix(y, 10),
                                                method="CROWN-Optimized", bound_upper=False)
                hit = (lower > 0).all(1)
                anyone[index[hit]] = True
                alpha_certified += int(hit.sum())
    n = x_all.shape[0]
    out = {
        "model": args.model, "samples": n, "eps": args.eps,
        "natural_accuracy": round(correct_all.float().mean().item(), 4),
        "certified": {m: int(c.sum()) for m, c in certified.items()},
        "alpha_crown_more": alpha_certified,
        "certified_by_any": int(anyone.sum()),
        "certified_accuracy": round(anyone.float().mean().item(), 4),
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
