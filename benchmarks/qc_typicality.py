"""matseg's chunked per-point PRDC statistics against a dense all-pairs version, in one run.

Time and peak memory of (a) matseg's chunked ``ReferenceSet.build`` + ``prdc_statistics`` and
(b) a dense implementation written here (the whole R x R, Q x Q and Q x R distance matrices,
each from one ``torch.cdist`` call, as Forte's reference code does), on random embeddings:
half the queries from the reference distribution, half shifted away from it. Each variant runs
in its own spawned process, so one variant's peak resident memory (VmHWM) never counts in the
other's. Both must give the same statistics; with ``--skip-dense`` that check runs at a small
size instead.

    python benchmarks/qc_typicality.py                      # 50000 x 768 reference, 10000 queries
    python benchmarks/qc_typicality.py --skip-dense         # chunked only (dense R x R is 10 GB)
    python benchmarks/qc_typicality.py --reference 2000 --queries 500 --dim 64   # quick look
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from typing import Any

import numpy as np
import torch

from matseg.qc.typicality import STATISTICS, ReferenceSet, prdc_statistics

DTYPES = {"float32": torch.float32, "float64": torch.float64}
SMALL = (2000, 500)  # reference, queries for the equality check when dense is skipped


def make_data(reference: int, queries: int, dim: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Seeded float32 embeddings: the reference set and queries (half ID, half shifted)."""
    rng = np.random.default_rng(seed)
    r = rng.standard_normal((reference, dim), dtype=np.float32)
    q = rng.standard_normal((queries, dim), dtype=np.float32)
    q[queries // 2 :] += np.float32(1.0 / np.sqrt(dim) * 3)  # means 3 apart: partly overlapping
    return r, q


def _mib(field: str) -> float:
    """A VmXXX line of /proc/self/status in MiB (Linux), or NaN elsewhere."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def dense_prdc(r: np.ndarray, q: np.ndarray, k: int, dtype: torch.dtype) -> np.ndarray:
    """The four statistics from full distance matrices, each computed in one cdist call."""
    mode = "use_mm_for_euclid_dist"
    rt, qt = torch.from_numpy(r).to(dtype), torch.from_numpy(q).to(dtype)

    def radii(x: torch.Tensor) -> torch.Tensor:
        d = torch.cdist(x, x, compute_mode=mode)
        d.fill_diagonal_(torch.inf)
        return torch.topk(d, k, dim=1, largest=False).values[:, -1]

    rho_r, rho_q = radii(rt), radii(qt)
    d = torch.cdist(qt, rt, compute_mode=mode)  # (n, m)
    m = len(r)
    in_ref = (d < rho_r).sum(dim=1)
    recall = (d < rho_q[:, None]).sum(dim=1).double() / m
    density = in_ref.double() / (k * m)
    precision = (in_ref > 0).double()
    coverage = (d.min(dim=1).values < rho_q).double()
    return torch.stack([recall, density, precision, coverage], dim=1).numpy()


def run_variant(variant: str, sizes: tuple[int, int, int], k: int, dtype: str, out: Any) -> None:
    """Child process: make the data, run one variant, send back times, memory and statistics."""
    r, q = make_data(*sizes)
    baseline = _mib("VmRSS")
    times: dict[str, float] = {}
    with torch.no_grad():
        t0 = time.perf_counter()
        if variant == "chunked":
            ref = ReferenceSet.build(r, k=k, dtype=DTYPES[dtype])
            times["build"] = time.perf_counter() - t0
            stats = prdc_statistics(ref, q, dtype=DTYPES[dtype])
        else:
            stats = dense_prdc(r, q, k, DTYPES[dtype])
        times["total"] = time.perf_counter() - t0
    out.send({"times": times, "baseline": baseline, "peak": _mib("VmHWM"), "stats": stats})
    out.close()


def measure(variant: str, sizes: tuple[int, int, int], k: int, dtype: str) -> dict[str, Any]:
    """Run one variant in a fresh spawned process and return what it measured."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=run_variant, args=(variant, sizes, k, dtype, child))
    proc.start()
    child.close()
    try:
        result = parent.recv()
    except EOFError:
        proc.join()
        raise SystemExit(f"{variant}: the child process died (exit code {proc.exitcode})") from None
    proc.join()
    return result


def compare(a: np.ndarray, b: np.ndarray, label: str) -> bool:
    """Print whether two statistics arrays are identical, and where not, by how much."""
    same = a.shape == b.shape and bool((a == b).all())
    if same:
        print(f"  {label}: identical statistics ({a.shape[0]} queries x {a.shape[1]})")
        return True
    rows = int((a != b).any(axis=1).sum())
    worst = np.abs(a - b).max(axis=0)
    per = ", ".join(f"{s} {w:.2e}" for s, w in zip(STATISTICS, worst, strict=True))
    print(f"  {label}: {rows} of {len(a)} rows differ; max |diff|: {per}")
    return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=int, default=50000, help="reference points m")
    parser.add_argument("--queries", type=int, default=10000, help="query points n")
    parser.add_argument("--dim", type=int, default=768, help="embedding dimension")
    parser.add_argument("--k", type=int, default=5, help="nearest neighbours")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--skip-dense", action="store_true", help="time the chunked variant only")
    args = parser.parse_args()
    sizes = (args.reference, args.queries, args.dim)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, cpus {os.cpu_count()}")
    print(
        f"reference {args.reference} x {args.dim}, queries {args.queries}, k {args.k}, "
        f"{args.dtype}; dense R x R alone is "
        f"{args.reference**2 * DTYPES[args.dtype].itemsize / 2**20:.0f} MiB"
    )

    results = {"chunked": measure("chunked", sizes, args.k, args.dtype)}
    if not args.skip_dense:
        results["dense"] = measure("dense", sizes, args.k, args.dtype)

    print(f"  {'variant':<8} {'seconds':>9} {'peak MiB':>9} {'above data MiB':>15}")
    for name, res in results.items():
        extra = res["peak"] - res["baseline"]
        print(f"  {name:<8} {res['times']['total']:9.2f} {res['peak']:9.0f} {extra:15.0f}")
    chunked = results["chunked"]
    print(
        f"  chunked: ReferenceSet.build {chunked['times']['build']:.2f} s, "
        f"prdc_statistics {chunked['times']['total'] - chunked['times']['build']:.2f} s"
    )
    if "dense" in results:
        dense = results["dense"]
        t = dense["times"]["total"] / chunked["times"]["total"]
        mem = (dense["peak"] - dense["baseline"]) / max(chunked["peak"] - chunked["baseline"], 1)
        print(
            f"  dense / chunked: time {t:.2f}x, peak memory {dense['peak'] / chunked['peak']:.2f}x "
            f"({mem:.1f}x above the data)"
        )
        same = compare(chunked["stats"], dense["stats"], "chunked vs dense")
    else:
        small = (*SMALL, args.dim)
        print(f"  equality check at reference {small[0]}, queries {small[1]}:")
        a = measure("chunked", small, args.k, args.dtype)["stats"]
        b = measure("dense", small, args.k, args.dtype)["stats"]
        same = compare(a, b, "chunked vs dense")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
