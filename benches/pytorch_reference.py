#!/usr/bin/env python3
"""PyTorch reference timings for `examples/bench_train.rs` (run by hand, never by CI).

Times the same training steps cthpo's bench_train times (same nets, batch, thread count, full
ε, cthpo's default hyperparameters), each as forward + loss + backward + Adam step, written
plainly after the papers:
- `standard`: cross-entropy;
- `ibp`: interval bound propagation with the margin spec folded into the last layer, robust
  cross-entropy (mixed with the natural loss);
- `pgd` (Madry et al.): cross-entropy at the PGD point (8 steps of 0.5ε from a random start,
  the highest-loss iterate kept, as CTRAIN's training attack);
- `sabr` (Müller et al.): the same attack with its step size ×0.1 after steps 4 and 7, then IBP
  on the box of radius 0.4ε around the point (kept inside the ε-box);
- `mtl_ibp` (De Palma et al.): 0.02·IBP loss + 0.98·cross-entropy at the PGD point;
- `crown_ibp` (Zhang et al.) with β = 1: IBP for the ReLUs' input bounds, then CROWN's backward
  linear relaxation from the margin spec for the output bounds;
- `taps` (Mao et al.) at full ε, split 0.5 (the first ⌈0.5·n⌉ of the n layers: on cnn-small
  conv, ReLU, flatten; on cnn7 the first four convolutions, BatchNorm following in the
  classifier): IBP through the extractor gives the latent box; the IBP loss continues through the
  classifier; for every (sample, other class) PGD in the latent box (random start, 8 signed steps
  of 0.5·(u − l) decayed ×0.1 after steps 4 and 7, the lowest-margin iterate kept) finds a pivot,
  tied to the box by the rectified gradient link (slack 0.5·(u − l)); the loss is
  `GradExpander(L_TAPS, 5)·L_IBP`. With BatchNorm, as cthpo does: a clean pass gives each
  BatchNorm's map from the clean batch's mean and variance, which the interval pass and the
  pivots' pass apply (differentiably) and the latent attack holds fixed;
- `staps`: the same on SABR's small box (the `sabr` attack and box; with BatchNorm its centre
  search, too, reads the clean batch's maps held fixed).
The attacks take input gradients only (`torch.autograd.grad` with respect to the input).

    python3 -m venv ../venv-ref && ../venv-ref/bin/pip install torch   # any folder outside the repository
    export PYTHON=$PWD/../venv-ref/bin/python
    $PYTHON benches/pytorch_reference.py --arch cnn-small --method ibp --batch 256 --threads 2
"""
import argparse
import json
import math
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
    return box_loss(net, (x - eps).clamp(0, 1), (x + eps).clamp(0, 1), y)


def interval_bounds(layers, lower, upper, maps=None, first=0):
    """IBP through `layers`; returns the output box and each ReLU's input box. With `maps`
    (`batch_norm_maps`, by index in the net; `first` the index of `layers[0]`) BatchNorm is that
    fixed affine map, else the layer in training mode on the centre, scaled by the running
    variance on the radius."""
    relu_inputs = []
    for index, layer in enumerate(layers, first):
        if maps is not None and index in maps:
            c, r = (upper + lower) / 2, (upper - lower) / 2
            scale, shift = maps[index]
            shape = (1, -1) + (1,) * (c.dim() - 2)
            c = c * scale.view(shape) + shift.view(shape)
            r = r * scale.abs().view(shape)
            lower, upper = c - r, c + r
            continue
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            c, r = (upper + lower) / 2, (upper - lower) / 2
            if isinstance(layer, nn.Conv2d):
                c = layer(c)
                r = F.conv2d(r, layer.weight.abs(), None, layer.stride, layer.padding)
            else:
                c, r = layer(c), F.linear(r, layer.weight.abs())
            lower, upper = c - r, c + r
        elif isinstance(layer, (nn.BatchNorm2d, nn.BatchNorm1d)):
            c, r = (upper + lower) / 2, (upper - lower) / 2
            scale = layer.weight / torch.sqrt(layer.running_var + layer.eps)
            shape = (1, -1) + (1,) * (c.dim() - 2)
            c = layer(c)
            r = r * scale.abs().view(shape)
            lower, upper = c - r, c + r
        elif isinstance(layer, nn.ReLU):
            relu_inputs.append((lower, upper))
            lower, upper = lower.relu(), upper.relu()
        else:
            lower, upper = layer(lower), layer(upper)
    return lower, upper, relu_inputs


def margin_spec(y, classes=10):
    eye = torch.eye(classes)
    return eye[y].unsqueeze(1) - eye.unsqueeze(0)  # [B, K, K], row y is zero


def crown_ibp_loss(net, x, y, eps):
    """CROWN-IBP (β = 1): CROWN's lower bounds of the margins, the ReLUs bounded by IBP."""
    layers = list(net)
    x_lower, x_upper = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    _, _, relu_inputs = interval_bounds(layers, x_lower, x_upper)
    spec = margin_spec(y)
    batch, specs = spec.shape[:2]
    shapes, h = [], x
    with torch.no_grad():
        for layer in layers:
            shapes.append(h.shape[1:])
            h = layer(h)
    a = spec  # [B, S, out]
    bias = torch.zeros(batch, specs)
    relu = len(relu_inputs)
    for index in reversed(range(len(layers))):
        layer = layers[index]
        if isinstance(layer, nn.Linear):
            bias = bias + a @ layer.bias
            a = a @ layer.weight
        elif isinstance(layer, nn.Conv2d):
            a4 = a.reshape(batch * specs, *layer_out_shape(layers, shapes, index))
            bias = bias + (a4.sum((2, 3)) @ layer.bias).reshape(batch, specs)
            out = F.conv_transpose2d(a4, layer.weight, None, layer.stride, layer.padding)
            c, height, width = shapes[index]
            pad = (0, width - out.shape[3], 0, height - out.shape[2])
            a = F.pad(out, pad).reshape(batch, specs, -1)
        elif isinstance(layer, nn.ReLU):
            relu -= 1
            lower, upper = (t.flatten(1).unsqueeze(1) for t in relu_inputs[relu])
            a = a.reshape(batch, specs, -1)
            slope = (upper.clamp(min=0) / (upper - lower).clamp(min=1e-12)).where(lower < 0, (lower >= 0).float())
            slope = slope.where(upper > 0, torch.zeros_like(slope))
            lower_slope = (upper > -lower).float().where(lower < 0, (lower >= 0).float())
            lower_slope = lower_slope.where(upper > 0, torch.zeros_like(lower_slope))
            intercept = (-slope * lower).where((lower < 0) & (upper > 0), torch.zeros_like(slope))
            positive, negative = a.clamp(min=0), a.clamp(max=0)
            bias = bias + (negative * intercept).sum(2)
            a = positive * lower_slope + negative * slope
        elif isinstance(layer, (nn.BatchNorm2d, nn.BatchNorm1d)):
            scale = layer.weight / torch.sqrt(layer.running_var + layer.eps)
            shift = layer.bias - layer.running_mean * scale
            per = shapes[index].numel() // scale.numel()
            a = a.reshape(batch, specs, scale.numel(), per)
            bias = bias + (a.sum(3) * shift).sum(2)
            a = (a * scale.view(1, 1, -1, 1)).reshape(batch, specs, -1)
        else:
            a = a.reshape(batch, specs, -1)
    a = a.reshape(batch, specs, -1)
    centre = ((x_upper + x_lower) / 2).flatten(1).unsqueeze(2)
    radius = ((x_upper - x_lower) / 2).flatten(1).unsqueeze(2)
    margin = (a @ centre).squeeze(2) - (a.abs() @ radius).squeeze(2) + bias
    return F.cross_entropy(-margin, y)


def layer_out_shape(layers, shapes, index):
    return shapes[index + 1] if index + 1 < len(shapes) else None


def pgd_point(net, x, y, eps, steps=8, alpha=0.5, decays=(), factor=0.1):
    """CTRAIN's training attack: cross-entropy ascent from a random start, no early stop, the
    highest-loss iterate kept; input gradients only. `net` is any callable (a module, or
    `fixed_forward` for the clean batch's BatchNorm maps)."""
    lower, upper = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    point = lower + torch.rand_like(x) * (upper - lower)
    best, best_loss = x.clone(), torch.full((x.shape[0],), -float("inf"))
    step_size = alpha * eps
    for step in range(steps + 1):
        point.requires_grad_(True)
        losses = F.cross_entropy(net(point), y, reduction="none")
        if step > 0:
            better = losses.detach() > best_loss
            best_loss = torch.where(better, losses.detach(), best_loss)
            best = torch.where(better.view(-1, 1, 1, 1), point.detach(), best)
        if step == steps:
            break
        (gradient,) = torch.autograd.grad(losses.sum(), point)
        point = torch.min(torch.max(point.detach() + step_size * gradient.sign(), lower), upper)
        if step + 1 in decays:
            step_size *= factor
    return best


def box_loss(net, lower, upper, y, maps=None, first=0):
    """Robust cross-entropy of IBP margin bounds over the box, the spec folded into the last layer
    (`maps`, `first`: as `interval_bounds`)."""
    layers = list(net)
    lower, upper, _ = interval_bounds(layers[:-1], lower, upper, maps, first)
    last = layers[-1]
    spec = margin_spec(y)
    w, b = spec @ last.weight, spec @ last.bias
    c, r = (upper + lower) / 2, (upper - lower) / 2
    margin = (w @ c.unsqueeze(2)).squeeze(2) + b - (w.abs() @ r.unsqueeze(2)).squeeze(2)
    return F.cross_entropy(-margin, y)


def other_class_specs(y, classes=10):
    """Margin rows e_y − e_j for every j ≠ y: [B, K − 1, K], and the classes j."""
    others = torch.stack([torch.cat([torch.arange(c), torch.arange(c + 1, classes)]) for c in range(classes)])[y]
    eye = torch.eye(classes)
    return eye[y].unsqueeze(1) - eye[others], others


def robust_ce(margin, y, others, classes=10):
    """Cross-entropy of the logits 0 at the label and −m_j at the other classes."""
    logits = torch.zeros(margin.shape[0], classes).scatter(1, others, -margin)
    return F.cross_entropy(logits, y)


def batch_norm_maps(net, x):
    """The clean forward pass in training mode (it updates the running statistics), and each
    BatchNorm's affine map `(γ/σ, β − μ·γ/σ)` from this batch's mean and variance, by layer
    index: differentiable, so the passes that read them as fixed maps still train through the
    clean batch's statistics (as cthpo's reverse pass does)."""
    maps, h = {}, x
    if not any(isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)) for layer in net):
        return maps  # no clean pass needed
    for index, layer in enumerate(net):
        if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
            var, mean = torch.var_mean(h, dim=[0] + list(range(2, h.dim())), unbiased=False)
            scale = layer.weight / torch.sqrt(var + layer.eps)
            maps[index] = (scale, layer.bias - mean * scale)
        h = layer(h)
    return maps


def fixed_forward(layers, maps, first=0):
    """The forward pass of `layers` (`layers[0]` being the net's layer `first`) with every
    BatchNorm the fixed affine map of `maps`."""
    def forward(h):
        for index, layer in enumerate(layers, first):
            if index in maps:
                scale, shift = maps[index]
                shape = (1, -1) + (1,) * (h.dim() - 2)
                h = h * scale.view(shape) + shift.view(shape)
            else:
                h = layer(h)
        return h
    return forward


def taps_loss(net, x, y, eps, box=None, maps=None, split_point=0.5, expansion=5.0, steps=8, alpha=0.5):
    """TAPS' loss; with BatchNorm (`maps`: `batch_norm_maps` of the clean batch) the interval
    pass, the latent attack and the pivots' pass all read the clean batch's maps, held fixed in
    the attack (cthpo's semantics)."""
    layers = list(net)
    split = math.ceil(split_point * len(layers))
    if maps is None:
        maps = batch_norm_maps(net, x)
    lower, upper = box if box is not None else ((x - eps).clamp(0, 1), (x + eps).clamp(0, 1))
    latent_lower, latent_upper, _ = interval_bounds(layers[:split], lower, upper, maps)
    ibp = box_loss(layers[split:], latent_lower, latent_upper, y, maps, split)
    classifier = fixed_forward(layers[split:], maps, split)
    held = {index: (scale.detach(), shift.detach()) for index, (scale, shift) in maps.items()}
    attacked = fixed_forward(layers[split:], held, split)
    spec, others = other_class_specs(y)
    rows = spec.shape[1]
    spec = spec.reshape(-1, spec.shape[2])
    l = latent_lower.repeat_interleave(rows, 0)
    u = latent_upper.repeat_interleave(rows, 0)
    lo, hi = l.detach(), u.detach()
    width = hi - lo
    z = lo + torch.rand_like(lo) * width
    best, best_margin = z, torch.full((z.shape[0],), float("inf"))
    step_size = alpha
    for step in range(steps + 1):
        z.requires_grad_(True)
        margin = (attacked(z) * spec).sum(1)
        better = margin.detach() < best_margin
        best_margin = torch.where(better, margin.detach(), best_margin)
        best = torch.where(better.view((-1,) + (1,) * (z.dim() - 1)), z.detach(), best)
        if step == steps:
            break
        (gradient,) = torch.autograd.grad(margin.sum(), z)
        z = torch.min(torch.max(z.detach() - step_size * gradient.sign() * width, lo), hi)
        if step + 1 in (4, 7):
            step_size *= 0.1
    slack = 0.5 * width
    safe = torch.where(slack > 0, slack, torch.ones_like(slack))
    to_upper = torch.where(slack > 0, (best - (hi - slack)).clamp(min=0) / safe, torch.zeros_like(slack))
    to_lower = torch.where(slack > 0, (lo + slack - best).clamp(min=0) / safe, torch.zeros_like(slack))
    linked = best + to_upper * (u - hi) + to_lower * (l - lo)
    margin = (classifier(linked) * spec).sum(1).reshape(-1, rows)
    taps = robust_ce(margin, y, others)
    return (expansion * taps - (expansion - 1) * taps.detach()) * ibp


def small_box(net, x, y, eps, ratio=0.4):
    point = pgd_point(net, x, y, eps, decays=(4, 7))
    return box_around(point, x, eps, ratio)


def box_around(point, x, eps, ratio=0.4):
    """SABR's small box: radius `ratio·ε` around `point`, its centre kept inside the ε-box."""
    lower, upper = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    small = ratio * eps
    centre = torch.min(torch.max(point, lower + small), upper - small)
    return (centre - small).clamp(min=lower), (centre + small).clamp(max=upper)


def step_loss(method, net, x, y, eps):
    if method == "standard":
        return F.cross_entropy(net(x), y)
    if method == "ibp":
        return 0.5 * F.cross_entropy(net(x), y) + 0.5 * ibp_loss(net, x, y, eps)
    if method == "pgd":
        return F.cross_entropy(net(pgd_point(net, x, y, eps)), y)
    if method == "sabr":
        return box_loss(net, *small_box(net, x, y, eps), y)
    if method == "taps":
        return taps_loss(net, x, y, eps)
    if method == "staps":
        # The centre search reads the clean batch's BatchNorm maps held fixed, as the latent
        # attack does.
        maps = batch_norm_maps(net, x)
        held = {index: (scale.detach(), shift.detach()) for index, (scale, shift) in maps.items()}
        point = pgd_point(fixed_forward(list(net), held), x, y, eps, decays=(4, 7))
        return taps_loss(net, x, y, eps, box=box_around(point, x, eps), maps=maps)
    if method == "mtl_ibp":
        adversarial = F.cross_entropy(net(pgd_point(net, x, y, eps)), y)
        return 0.02 * ibp_loss(net, x, y, eps) + 0.98 * adversarial
    if method == "crown_ibp":
        return crown_ibp_loss(net, x, y, eps)
    raise SystemExit(f"unknown method {method}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="cnn-small")
    ap.add_argument("--method", default="ibp",
                    choices=["standard", "ibp", "pgd", "sabr", "mtl_ibp", "crown_ibp", "taps", "staps"])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = build(args.arch)
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=5e-4)
    x = torch.rand(args.batch, 1, 28, 28)
    y = torch.arange(args.batch) % 10
    times = []
    for step in range(args.steps + args.warmup):
        start = time.perf_counter()
        loss = step_loss(args.method, net, x, y, 0.1)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 10.0)
        opt.step()
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    print(json.dumps({"arch": args.arch, "method": args.method, "batch": args.batch, "threads": args.threads,
                      "torch": torch.__version__, "ms_per_step": round(median * 1e3, 3),
                      "samples_per_s": round(args.batch / median, 1)}))


if __name__ == "__main__":
    main()
