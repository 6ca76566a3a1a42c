"""Ranks and sizes of ``export --to lora`` on the real SDXL architecture, for DoRA, LoHa and LoKr files.

    OMP_NUM_THREADS=1 python -m benchmarks.export_ranks            # from the repository root; offline

The UNet (with conv layers, as kohya's ``conv_dim``) and both text encoders are built on the meta device for
their layer shapes only; kohya's default targets as bespoke_pl trains them (text encoder 1 at clip skip 2).
Layers of one shape and kind are statistically alike here, so each distinct (shape, network) is measured
once and counted as many times as it occurs: per distinct layer, a random base weight at PyTorch's init
scale (uniform, bound 1/sqrt(fan_in)) is made on the fly, an adapter of ``--rank`` is injected with peft as in
training, its factors randomised and scaled so that the update's norm is ``--update`` of the base weight's
(DoRA: of the LoRA part; its magnitudes then drift by ``--drift`` per row from the adapted rows' norms, as
training moves them). The export's own code then computes the exact update and its truncated SVD.

Caveat: i.i.d. random base weights have a flat spectrum; trained weights decay, so DoRA, whose update holds
``(diag(s) - I) W``, needs less rank on a real model than here. LoHa / LoKr ranks do not depend on ``W``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter

import torch
from torch import nn

from bespoke_pl.lora.inject import add_lora, lora_weights, text_encoder_targets, unet_targets
from bespoke_pl.lora.loading import merged_weight
from bespoke_pl.lora.lowrank import low_rank, rank_for_error
from bespoke_pl.offline.architectures import real_text_encoders, real_unet

NETWORKS = {"DoRA": {"use_dora": True}, "LoHa": {"network": "loha"}, "LoKr": {"network": "lokr"}}


def layer_shapes(conv_rank: bool = True) -> Counter:
    """(kind, out, in, kernel) -> count over the SDXL UNet (with conv layers) and both text encoders."""
    with torch.device("meta"):
        unet, encoders = real_unet("sdxl"), real_text_encoders("sdxl")
    shapes: Counter = Counter()
    linear, conv = unet_targets(unet, include_conv=conv_rank)
    modules = dict(unet.named_modules())
    found = [modules[n] for n in linear + conv]
    for i, encoder in enumerate(encoders.values()):
        used = None if i == 1 else encoder.config.num_hidden_layers - 2 + 1  # clip skip 2 on encoder 1
        named = dict(encoder.named_modules())
        found += [named[n] for n in text_encoder_targets(encoder, used)]
    for m in found:
        if isinstance(m, nn.Linear):
            shapes[("linear", m.out_features, m.in_features, 1)] += 1
        else:
            shapes[("conv", m.out_channels, m.in_channels, m.kernel_size[0])] += 1
    return shapes


def one_layer(kind: str, out: int, inputs: int, kernel: int) -> nn.Module:
    layer = (
        nn.Linear(inputs, out) if kind == "linear" else nn.Conv2d(inputs, out, kernel, padding=kernel // 2)
    )
    return nn.ModuleDict({"layer": layer})


@torch.no_grad()
def trained_adapter(shape: tuple, network: str, rank: int, update: float, drift: float, seed: int):
    """(base weight, the adapter's weights as read from a file) for one layer, randomised as if trained."""
    torch.manual_seed(seed)
    model = one_layer(*shape)
    add_lora(model, ["layer"], rank, rank, **NETWORKS[network])
    for name, parameter in model.named_parameters():
        if parameter.requires_grad and "magnitude" not in name:
            parameter.normal_(0, 1)
    weights = lora_weights(model)["layer"]
    weight = model["layer"].base_layer.weight.detach()
    magnitude, weights.magnitude = weights.magnitude, None
    factor = update * weight.norm() / weights.delta().norm()
    if network == "DoRA":
        weights.up = weights.up * factor
    elif network == "LoHa":
        weights.w1a = weights.w1a * factor
    elif weights.w1 is not None:
        weights.w1 = weights.w1 * factor
    else:
        weights.w1a = weights.w1a * factor
    if magnitude is not None:
        rows = (weight.flatten(1) + weights.delta()).norm(dim=1)
        weights.magnitude = rows * (1 + drift * torch.randn(rows.shape))
    return weight, weights


def source_parameters(weights) -> int:
    return sum(v.numel() for v in vars(weights).values() if isinstance(v, torch.Tensor))


def measure(shapes: Counter, network: str, args) -> dict:
    """Per distinct shape: rank at --max_error and at 5%, error, seconds; totals weighted by the counts."""
    rows = []
    for seed, (shape, count) in enumerate(sorted(shapes.items())):
        weight, weights = trained_adapter(shape, network, args.rank, args.update, args.drift, seed)
        delta = (merged_weight(weight, weights) - weight).flatten(1)
        started = time.perf_counter()
        approx = low_rank(delta, args.max_error, None, torch.float16)
        seconds = time.perf_counter() - started
        loose = rank_for_error(torch.linalg.svdvals(delta), 0.05)
        per_rank = shape[1] + shape[2] * shape[3] ** 2  # out + in * kh * kw parameters per rank
        rows.append(
            (shape, count, approx.rank, approx.error, loose, per_rank, seconds, source_parameters(weights))
        )
    layers = sum(r[1] for r in rows)
    ranks = [r[2] for r in rows for _ in range(r[1])]
    full = [min(r[0][1], r[0][2] * r[0][3] ** 2) for r in rows for _ in range(r[1])]
    return {
        "layers": layers,
        "ranks": ranks,
        "fraction": statistics.mean(r / f for r, f in zip(ranks, full, strict=True)),
        "max_error": max(r[3] for r in rows),
        "bytes": sum(r[1] * r[2] * r[5] * 2 for r in rows),  # float16
        "bytes_5": sum(r[1] * r[4] * r[5] * 2 for r in rows),
        "source_bytes": sum(r[1] * r[7] * 2 for r in rows),
        "seconds": sum(r[1] * r[6] for r in rows),
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rank", type=int, default=16, help="the adapter's rank (conv layers too)")
    parser.add_argument("--update", type=float, default=0.05, help="||update|| / ||W|| of each layer")
    parser.add_argument("--drift", type=float, default=0.01, help="DoRA: magnitudes' relative drift (std)")
    parser.add_argument("--max_error", type=float, default=0.01, help="the export's bound")
    parser.add_argument("--per_shape", action="store_true", help="also print each distinct layer shape")
    args = parser.parse_args()
    shapes = layer_shapes()
    full_weights = sum(c * o * i * k * k for (_, o, i, k), c in shapes.items())
    print(f"SDXL, {sum(shapes.values())} adapted layers ({len(shapes)} distinct shapes), rank {args.rank}, "
          f"update {args.update:.0%} of ||W||, DoRA drift {args.drift:.0%}; the adapted layers' full weights: "
          f"{full_weights * 2 / 1e6:.0f} MB in float16\n")  # fmt: skip
    print(f"| source | source file | export rank min / median / max | mean rank / full rank | max error "
          f"| export at {args.max_error:.0%} | export at 5% | SVD time (1 CPU thread) |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for network in NETWORKS:
        result = measure(shapes, network, args)
        ranks = result["ranks"]
        print(
            f"| {network} rank {args.rank} | {result['source_bytes'] / 1e6:.0f} MB | {min(ranks)} / "
            f"{int(statistics.median(ranks))} / {max(ranks)} | {result['fraction']:.0%} | "
            f"{result['max_error']:.2%} | {result['bytes'] / 1e6:.0f} MB | {result['bytes_5'] / 1e6:.0f} MB | "
            f"{result['seconds'] / 60:.1f} min |"
        )
        if args.per_shape:
            for shape, count, rank, error, loose, _, seconds, _ in result["rows"]:
                print(f"    {shape} x{count}: rank {rank} ({error:.2%}), at 5% {loose}, {seconds:.2f} s")


if __name__ == "__main__":
    main()
