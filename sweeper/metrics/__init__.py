"""Label-free metrics of embedding matrices (layer L0: tensors in, floats out, no I/O).

Every metric is a pure function of an embedding matrix Z of shape (N, K) — a torch tensor of
any floating dtype on any device, or a numpy array — computed in float64 on the input's device
(on the CPU for Apple ``mps``, which has no float64). LiDAR takes views of shape (n, q, K).
`EmbeddingStats` accumulates sufficient statistics over batches so that all metrics but LiDAR
can be computed without keeping the embeddings. Definitions and papers: ``METHODS.md`` and
each module's docstring.
"""

from sweeper.metrics._stats import LABEL_FREE_METRICS, EmbeddingStats
from sweeper.metrics.alpha_req import AlphaReq, alpha_req
from sweeper.metrics.classical_rank import classical_rank
from sweeper.metrics.lidar import lidar
from sweeper.metrics.nesum import nesum
from sweeper.metrics.rankme import rankme, rankme_from_singular_values, singular_values
from sweeper.metrics.self_clustering import self_clustering
from sweeper.metrics.stable_rank import stable_rank

__all__ = [
    "LABEL_FREE_METRICS",
    "AlphaReq",
    "EmbeddingStats",
    "alpha_req",
    "classical_rank",
    "lidar",
    "nesum",
    "rankme",
    "rankme_from_singular_values",
    "self_clustering",
    "singular_values",
    "stable_rank",
]
