"""Benchmark: `sweeper.metrics.rankme` against the RankMe snippet people copy.

The snippet (float64 SVD of the whole matrix)::

    s = torch.linalg.svdvals(z.double()); p = s / s.sum() + 1e-7; rankme = exp(-(p * log p).sum())

Inputs: float32 Z of shape (N, K) with a realistic decaying spectrum — Gaussian columns scaled by
i^(-decay/2), i.e. covariance eigenvalues λ_i ∝ i^(-decay) (α-ReQ's "good" regime is decay ≈ 1).

Each (method, K) runs in a fresh subprocess so that its peak memory can be measured: torch's
allocations are invisible to tracemalloc, so we report the growth of the process's peak resident
set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) across the timed call, i.e. the memory
the computation needs on top of the input matrix (which exists before the call). The input is
generated in place so that the peak before the call equals the resident size of the input.

Usage::

    python bench/rankme.py                                  # N = 25 600, K ∈ {512, 2048, 8192}
    python bench/rankme.py --sizes 512 2048 --skip-snippet-above 4096
    python bench/rankme.py --n 4096 --sizes 256 512 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path


def _import_rankme():  # noqa: ANN202 - returns the function
    try:
        from sweeper.metrics import rankme
    except ImportError:  # running from a checkout without `pip install -e .`
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from sweeper.metrics import rankme
    return rankme


def _snippet(z):  # noqa: ANN001, ANN202 - the copied code, verbatim
    import torch

    s = torch.linalg.svdvals(z.double())
    p = s / s.sum() + 1e-7
    return float(torch.exp(-(p * torch.log(p)).sum()))


def _peak_rss_mib() -> float:
    # ru_maxrss is in KiB on Linux (bytes on macOS).
    scale = 1 / 1024 if sys.platform != "darwin" else 1 / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _child(method: str, n: int, k: int, seed: int, decay: float, repeats: int) -> dict[str, float]:
    import torch

    rankme = _import_rankme()
    fn = {"ours": lambda z: rankme(z, max_samples=None), "snippet": _snippet}[method]
    fn(torch.randn(64, 8))  # warm-up: BLAS/LAPACK initialisation, thread pool
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, k, generator=g)
    z.mul_(torch.arange(1, k + 1, dtype=torch.float32).pow_(-decay / 2))
    before = _peak_rss_mib()
    times = []
    value = math.nan
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn(z)
        times.append(time.perf_counter() - start)
    return {"seconds": min(times), "value": value, "peak_extra_mib": _peak_rss_mib() - before}


def _run_child(method: str, args: argparse.Namespace, k: int) -> dict[str, float]:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        method,
        "--n",
        str(args.n),
        "--sizes",
        str(k),
        "--seed",
        str(args.seed),
        "--decay",
        str(args.decay),
        "--repeats",
        "1",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=os.environ.copy())
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=25_600, help="rows N (default 25 600, the paper's)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 2048, 8192], help="dimensions K")
    parser.add_argument(
        "--skip-snippet-above",
        type=int,
        default=None,
        metavar="K",
        help="do not run the snippet for K above this (its float64 SVD can take minutes)",
    )
    parser.add_argument(
        "--repeats", type=int, default=1, help="alternating fresh-process runs per method; the best is kept"
    )
    parser.add_argument("--decay", type=float, default=1.0, help="covariance eigenvalues ∝ i^-decay")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", choices=["ours", "snippet"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        print(json.dumps(_child(args.child, args.n, args.sizes[0], args.seed, args.decay, args.repeats)))
        return 0

    import torch

    print(
        f"N = {args.n}, float32 input, covariance spectrum i^-{args.decay:g}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, best of {args.repeats} "
        f"alternating runs, load average {os.getloadavg()[0]:.1f}\n"
    )
    print("| K | ours (s) | snippet (s) | speed-up | rel. diff | ours peak extra (MiB) | snippet peak extra (MiB) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for k in args.sizes:
        skip = args.skip_snippet_above is not None and k > args.skip_snippet_above
        methods = ["ours"] if skip else ["ours", "snippet"]
        results: dict[str, dict[str, float]] = {}
        # Alternate fresh processes (ours, snippet, ours, ...) and keep each method's best time,
        # so that a load spike on a shared machine does not land on one method only.
        for _ in range(args.repeats):
            for method in methods:
                run = _run_child(method, args, k)
                best = results.setdefault(method, run)
                peak = max(run["peak_extra_mib"], best["peak_extra_mib"])
                if run["seconds"] < best["seconds"]:
                    results[method] = run
                results[method]["peak_extra_mib"] = peak
        ours, snippet = results["ours"], results.get("snippet")
        if snippet is None:
            cells = ["skipped", "—", "—", "—"]
        else:
            diff = abs(ours["value"] - snippet["value"]) / abs(snippet["value"])
            cells = [
                f"{snippet['seconds']:.2f}",
                f"{snippet['seconds'] / ours['seconds']:.1f}×",
                f"{diff:.1e}",
                f"{snippet['peak_extra_mib']:.0f}",
            ]
        row = [str(k), f"{ours['seconds']:.2f}", *cells[:3], f"{ours['peak_extra_mib']:.0f}", cells[3]]
        print("| " + " | ".join(row) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
