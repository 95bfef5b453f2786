"""The false-"better" rate and the power of matseg's choice of architecture, simulated.

Prints (1) how often a grid of six combinations that differ only by noise gets a "better"
verdict, for matseg's procedure (every pair tested, Holm over all 15) and for the naive one
(the best chosen on the data, then tested only against the other five, Holm over 5), and (2)
the power to call the truly best "better" when it leads by 0.02 IoU, for 10 / 20 / 40 images
and per-image paired differences with standard deviation 0.01-0.05.

    python benchmarks/selection_power.py [--simulations 1000]
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy import stats

from matseg.selection import compare_to_best, holm, power


def null_rates(simulations: int, n_images: int = 20, sd: float = 0.03) -> tuple[float, float]:
    rng = np.random.default_rng(0)
    ours = naive = 0
    for s in range(simulations):
        difficulty = rng.normal(0.7, 0.1, n_images)
        scores = {f"c{i}": difficulty + rng.normal(0, sd, n_images) for i in range(6)}
        ours += any(c.verdict == "better" for c in compare_to_best(scores, n_boot=200, seed=s))
        best = max(scores, key=lambda k: scores[k].mean())
        p = [stats.wilcoxon(scores[best] - x).pvalue for k, x in scores.items() if k != best]
        naive += bool((holm(p) < 0.05).any())
    return ours / simulations, naive / simulations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--simulations", type=int, default=1000)
    args = parser.parse_args()
    ours, naive = null_rates(args.simulations)
    print(f"no real difference, 6 combinations, 20 images, {args.simulations} simulations:")
    print(f"  any false 'better': matseg (all pairs, Holm) {ours:.3f}; ", end="")
    print(f"naive (best vs the rest) {naive:.3f}")
    sds = (0.01, 0.02, 0.03, 0.05)
    print("power to call the best 'better' (lead 0.02 IoU, 6 combinations, alpha 0.05):")
    print("  images  " + "  ".join(f"sd {sd:.2f}" for sd in sds))
    for n in (10, 20, 40):
        row = [power(n, 0.02, sd, simulations=args.simulations // 4, seed=n) for sd in sds]
        print(f"  {n:6d}  " + "  ".join(f"{p:7.2f}" for p in row))


if __name__ == "__main__":
    main()
