"""What ``precision: auto`` chooses on this machine, and why: fp32 against bf16-mixed training
step time of tf_efficientnet_lite0-UNet (batch 2, 128 px, the case measured on an AVX2 laptop:
11.0 s bf16 against 1.3 s fp32) and of resnet18-UNet (batch 8, 256 px), side by side in one run.

    python benchmarks/precision_auto.py [--steps 10]

Prints the CPU's bf16 support as torch reports it, what ``auto`` resolves to, each model's
median step time in both precisions and the ratio bf16 / fp32 (below 1: bf16 pays). Run it with
nothing else running.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from matseg.models import build_model, native_bf16, resolve_precision

CASES = [("tu-tf_efficientnet_lite0", 2, 128), ("resnet18", 8, 256)]


def step_seconds(encoder: str, batch: int, size: int, bf16: bool, steps: int) -> float:
    torch.manual_seed(0)
    model, _ = build_model(encoder, "unet", 3, 2)
    model.train()
    if bf16:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, 2, (batch, size, size))
    if bf16:
        x = x.contiguous(memory_format=torch.channels_last)
    times = []
    for i in range(steps + 2):  # two warm-up steps
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    caps = {k: v for k, v in torch.cpu.get_capabilities().items()
            if k in ("avx2", "avx512_bf16", "amx_bf16", "amx_tile", "cpu_name")}  # fmt: skip
    print(f"cpu: {caps}; native bf16: {native_bf16('cpu')}; auto -> {resolve_precision('auto')}")
    for encoder, batch, size in CASES:
        fp32 = step_seconds(encoder, batch, size, False, args.steps)
        bf16 = step_seconds(encoder, batch, size, True, args.steps)
        print(f"{encoder}-unet batch {batch} {size} px: fp32 {fp32:.3f} s, bf16 {bf16:.3f} s, "
              f"bf16 / fp32 = {bf16 / fp32:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
