"""Each SSL method on digits at its default setting and at the papers' known collapse setting:
RankMe of the embedding (and of the representation) and k-NN accuracy after training (the table issue #4 asks for).

Every run is ``configs/digits/<method>.yaml`` with one method parameter overridden, trained as a
plain loop over :class:`sweeper.engine.Trainer` (no Ray, no MLflow), evaluated once at the end
(RankMe on the clean training images, the 20-NN oracle on the test split). Two runs at a time,
one torch thread each.

The collapse settings are the ones ``../shared/METHODS.md`` and the papers name:

* SimCLR: a high temperature (τ = 4, "high τ → low rank");
* VICReg, VICReg-exp, VICReg-ctr: no covariance term (ν = 0);
* Barlow Twins: no redundancy-reduction term (λ = 0);
* BYOL: no predictor (Grill et al. 2020, Table 5b); also τ_base = 0 *with* the predictor;
* DINO: teacher temperature 0.08 with centre momentum 0.999 (Caron et al. 2021, Fig. 7);
* SwAV: a large Sinkhorn ε (uniform codes);
* CARP: no entropy term (λ_e = 0, papers/002 §3); also N_B = K (Table B.2).

Usage::

    python bench/collapse.py                       # all nine methods, 20 epochs each
    python bench/collapse.py --methods vicreg carp --epochs 5
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from _common import ROOT, PlainTrial, fmt, machine_line, markdown_table, plain_trial

from sweeper.config import load_config
from sweeper.data import load_dataset

DIGITS = ROOT / "configs" / "digits"

#: method -> [(label, overrides of method.params)], its collapse settings; ``block_size: None``
#: stands for the config's ``num_prototypes`` (N_B = K).
COLLAPSE: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "simclr": [("τ = 4", {"temperature": 4.0})],
    "vicreg": [("ν = 0", {"cov_weight": 0.0})],
    "vicreg_exp": [("ν = 0", {"cov_weight": 0.0})],
    "vicreg_ctr": [("ν = 0", {"cov_weight": 0.0})],
    "barlow_twins": [("λ = 0", {"lambda_offdiag": 0.0})],
    "byol": [("no predictor", {"use_predictor": False}), ("τ_base = 0", {"base_momentum": 0.0})],
    "dino": [("τ_t = 0.08, m_c = 0.999", {"teacher_temp": 0.08, "center_momentum": 0.999})],
    "swav": [("ε = 3", {"epsilon": 3.0})],
    "carp": [("λ_e = 0", {"entropy_weight": 0.0}), ("N_B = K", {"block_size": None})],
}


def _run(method: str, label: str, params: dict[str, Any], epochs: int) -> tuple[str, str, PlainTrial]:
    config = load_config(DIGITS / f"{method}.yaml")
    if params.get("block_size", 0) is None:
        params = {"block_size": config.method.params["num_prototypes"]}
    config = config.with_overrides(
        {
            "train.epochs": epochs,
            "evaluation.every_n_epochs": epochs,
            "evaluation.oracle": ["knn"],
            **{f"method.params.{key}": value for key, value in params.items()},
        }
    )
    trial = plain_trial(config, "seed", config.seed, threads=1, data=load_dataset(config.data))  # no-op override
    return method, label, trial


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=list(COLLAPSE), choices=list(COLLAPSE))
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    jobs = []
    for method in args.methods:
        jobs.append((method, "default", {}))
        jobs += [(method, label, params) for label, params in COLLAPSE[method]]
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        futures = [pool.submit(_run, *job, args.epochs) for job in jobs]
        results = []
        for done, future in enumerate(futures, 1):
            results.append(future.result())
            method, label, trial = results[-1]
            print(f"[{done}/{len(jobs)}] {method} {label}: {trial.wall_s:.0f} s", flush=True)

    rows = []
    for method, label, trial in results:
        dim = load_config(DIGITS / f"{method}.yaml").model.projector[-1]
        rankme = trial.metrics.get("rankme/embedding")
        rows.append(
            [
                method,
                label,
                f"{fmt(rankme, 1)} / {dim}",
                fmt(trial.metrics.get("rankme/representation"), 1),
                fmt(trial.metrics.get("oracle/knn/digits"), 3),
                trial.status,
            ]
        )
    print(f"\n{machine_line()}; {args.epochs} epochs; {time.perf_counter() - started:.0f} s in all\n")
    headers = ["method", "setting", "RankMe (embedding) / dim", "RankMe (representation)", "k-NN", "status"]
    print(markdown_table(headers, rows))


if __name__ == "__main__":
    main()
