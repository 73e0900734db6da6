"""Label-free metrics of embedding matrices (layer L0: tensors in, floats out, no I/O).

Every metric is a pure function of an embedding matrix Z of shape (N, K) — a torch tensor of
any floating dtype on any device, or a numpy array — computed in float64 on the input's device
(on the CPU for Apple ``mps``, which has no float64). LiDAR takes views of shape (n, q, K).
`EmbeddingStats` accumulates sufficient statistics over batches so that all metrics but LiDAR,
coherence, the pseudo-condition number and the intrinsic dimension (which need the rows) can be
computed without keeping the embeddings; `EmbeddingStats.all_reduce` and the
``distributed_*`` functions compute them over the row shards of several processes (a
data-parallel trial) from all-reduced Grams, never gathering the embeddings. Definitions and
papers: ``METHODS.md`` and each module's docstring.
"""

from sweeper.metrics._stats import LABEL_FREE_METRICS, EmbeddingStats
from sweeper.metrics.alpha_req import AlphaReq, alpha_req
from sweeper.metrics.classical_rank import classical_rank
from sweeper.metrics.coherence import (
    coherence,
    coherence_and_condition,
    distributed_coherence_and_condition,
    pseudo_condition,
)
from sweeper.metrics.intrinsic_dimension import intrinsic_dimension
from sweeper.metrics.lidar import distributed_lidar, lidar
from sweeper.metrics.nesum import nesum
from sweeper.metrics.rankme import (
    distributed_rankme,
    distributed_singular_values,
    rankme,
    rankme_from_singular_values,
    singular_values,
)
from sweeper.metrics.self_clustering import self_clustering
from sweeper.metrics.stable_rank import stable_rank

__all__ = [
    "LABEL_FREE_METRICS",
    "AlphaReq",
    "EmbeddingStats",
    "alpha_req",
    "classical_rank",
    "coherence",
    "coherence_and_condition",
    "distributed_coherence_and_condition",
    "distributed_lidar",
    "distributed_rankme",
    "distributed_singular_values",
    "intrinsic_dimension",
    "lidar",
    "nesum",
    "pseudo_condition",
    "rankme",
    "rankme_from_singular_values",
    "self_clustering",
    "singular_values",
    "stable_rank",
]
