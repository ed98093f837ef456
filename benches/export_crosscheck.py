#!/usr/bin/env python3
"""Cross-checks a `cthpo export` benchmark with other tools (run by hand, never by CI).

Reads every instance of BENCH/instances.csv with α,β-CROWN's own VNN-LIB reader
(`read_vnnlib` from its `complete_verifier` directory), converts the ONNX model to PyTorch with
onnx2pytorch (the converter α,β-CROWN builds on), and bounds each property's box with
auto_LiRPA's CROWN: an instance counts as certified when the lower bound of every
`y_label − y_j` the property's disjunction names is > 0. Prints one JSON object: instances, how
many the network classifies correctly at the box centre, how many CROWN certifies. On the same
images `cthpo verify --samples N --eps E --method crown --json` should report the same natural
accuracy and a certified accuracy at least as high (cthpo's CROWN intersects its intermediate
bounds with the interval ones).

Set-up: the auto_LiRPA virtualenv of benches/lirpa_certify_reference.py, plus
`pip install onnx onnx2pytorch torchvision==0.23.0 pillow pyyaml onnxruntime` (onnx2pytorch
imports torchvision), and a copy of α,β-CROWN's source.

    $PYTHON benches/export_crosscheck.py bench --abcrown /path/to/alpha-beta-CROWN/complete_verifier
"""
import argparse
import csv
import json
import os
import sys
import time

import numpy as np
import torch


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bench", help="directory holding instances.csv")
    parser.add_argument("--abcrown", required=True, help="α,β-CROWN's complete_verifier directory")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    bench = os.path.abspath(args.bench)
    with open(os.path.join(bench, "instances.csv")) as f:
        rows = list(csv.reader(f))

    # α,β-CROWN's modules read its configuration (defaults) at import, from its own folder.
    sys.argv = [sys.argv[0]]
    sys.path.insert(0, os.path.abspath(args.abcrown))
    os.chdir(args.abcrown)
    import arguments

    arguments.Config.parse_config()
    from read_vnnlib import read_vnnlib
    import onnx
    from onnx2pytorch import ConvertModel
    from auto_LiRPA import BoundedModule, BoundedTensor, PerturbationLpNorm

    torch.set_num_threads(args.threads)
    model_proto = onnx.load(os.path.join(bench, rows[0][0]))
    shape = [d.dim_value for d in model_proto.graph.input[0].type.tensor_type.shape.dim]
    model = ConvertModel(model_proto, experimental=True).eval()
    bounded = BoundedModule(model, torch.zeros(shape), device="cpu")
    correct = certified = 0
    start = time.time()
    for _, vnnlib_path, _ in rows:
        box, terms = read_vnnlib(os.path.join(bench, vnnlib_path))[0]
        box = torch.tensor(np.array(box), dtype=torch.float32)
        lower, upper = box[:, 0].reshape(shape), box[:, 1].reshape(shape)
        # Each term is `mat @ y <= rhs` with mat = e_label - e_j and rhs = 0 (y_j >= y_label).
        mats = np.array([np.array(mat)[0] for mat, _ in terms])
        label = int(mats.sum(axis=0).argmax())
        centre = (lower + upper) / 2
        with torch.no_grad():
            if int(model(centre).argmax()) != label:
                continue
        correct += 1
        ptb = PerturbationLpNorm(norm=float("inf"), x_L=lower, x_U=upper)
        spec = torch.tensor(mats, dtype=torch.float32).unsqueeze(0)
        lb, _ = bounded.compute_bounds(
            x=(BoundedTensor(centre, ptb),), C=spec, method="CROWN", bound_upper=False
        )
        certified += int((lb > 0).all())
    print(json.dumps({
        "instances": len(rows),
        "centre_correct": correct,
        "crown_certified": certified,
        "seconds": time.time() - start,
    }))


if __name__ == "__main__":
    main()
