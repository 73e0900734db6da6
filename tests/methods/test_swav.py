"""SwAV: swapped prediction with Sinkhorn-Knopp codes against the thesis' algorithm, the queue,
the frozen prototypes and the embedding/prototype shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sweeper.data import MultiViewAugment
from sweeper.hyperparams import SwAVParams
from sweeper.methods.swav import SwAV

K = 12


def _sinkhorn_np(scores: np.ndarray, eps: float, iterations: int = 3) -> np.ndarray:
    """papers/003 §4.2.2 pseudo-code: Q = exp(Z/ε); repeat: normalise clusters, then samples."""
    q = np.exp(scores / eps)
    for _ in range(iterations):
        q = q / q.sum(axis=0, keepdims=True)
        q = q / q.sum(axis=1, keepdims=True)
    return q


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def _swav_np(scores: list[np.ndarray], eps: float, tau: float, queue: list[np.ndarray] | None = None) -> float:
    """½ Σ_{t} H(q_t, p_s) over the two views s ≠ t; codes from the batch (+ queue) scores."""
    total = 0.0
    for t, s in [(0, 1), (1, 0)]:
        batch = scores[t]
        stacked = batch if queue is None else np.concatenate([batch, queue[t]])
        q = _sinkhorn_np(stacked, eps)[: len(batch)]
        total += float(np.mean(-np.sum(q * _log_softmax(scores[s] / tau), axis=1)))
    return total / 2


def _method(backbone, **overrides) -> SwAV:
    return SwAV(backbone, projector=[32, 16], **SwAVParams(num_prototypes=K, **overrides).model_dump())


@pytest.mark.parametrize(("eps", "tau"), [(0.05, 0.1), (0.3, 0.2)])
def test_loss_matches_the_formula(backbone, eps, tau) -> None:
    method = _method(backbone, epsilon=eps, temperature=tau)
    g = torch.Generator().manual_seed(0)
    scores = [torch.rand(8, K, generator=g, dtype=torch.float64) * 2 - 1 for _ in range(2)]
    queue = [torch.rand(16, K, generator=g, dtype=torch.float64) * 2 - 1 for _ in range(2)]
    np_scores, np_queue = [s.numpy() for s in scores], [q.numpy() for q in queue]
    assert float(method.criterion(scores, [])) == pytest.approx(_swav_np(np_scores, eps, tau), rel=1e-9)
    with_queue = float(method.criterion(scores, [], queue))
    assert with_queue == pytest.approx(_swav_np(np_scores, eps, tau, np_queue), rel=1e-9)


def test_queue_fills_then_joins_the_codes(backbone) -> None:
    method = _method(backbone, queue_length=16, queue_start=0.5)
    g = torch.Generator().manual_seed(1)
    batches = [[torch.randn(8, 16, generator=g) for _ in range(2)] for _ in range(3)]
    assert method._queue_scores(batches[0], progress=0.2) is None  # before queue_start: untouched
    assert not method.queue.any()
    assert method._queue_scores(batches[0], progress=0.5) is None  # filling
    assert method._queue_scores(batches[1], progress=0.6) is None  # full only after this batch
    scores = method._queue_scores(batches[2], progress=0.7)
    assert scores is not None and [s.shape for s in scores] == [(16, K), (16, K)]
    # newest first: the queue now holds batches 2 and 1 of each view
    assert torch.equal(method.queue[0], torch.cat([batches[2][0], batches[1][0]]))
    assert torch.equal(method.queue[1], torch.cat([batches[2][1], batches[1][1]]))


def test_prototypes_frozen_during_the_first_epoch_and_renormalised(backbone, make_views) -> None:
    method = _method(backbone, freeze_prototypes_epochs=1)
    weight = method.prototype_layer.heads[0].weight
    for epoch, frozen in [(0, True), (1, False)]:
        method.zero_grad(set_to_none=True)
        method.training_loss(make_views(2), progress=0.0).backward()
        assert torch.allclose(weight.norm(dim=1), torch.ones(K), atol=1e-6)
        method.before_optimizer_step(progress=0.0, epoch=epoch)
        assert (weight.grad is None) is frozen
    assert method.prototype_layer.heads[0].bias is None


def test_embedding_and_prototypes_are_l2_normalised(backbone, digits_batch) -> None:
    method = _method(backbone)
    method.eval()
    _, embedding = method.embed(digits_batch[:5])
    assert torch.allclose(embedding.norm(dim=1), torch.ones(5), atol=1e-5)
    assert torch.allclose(method.prototypes().norm(dim=1), torch.ones(K), atol=1e-5)


def test_multicrop_asks_for_more_views(backbone, make_views) -> None:
    method = _method(backbone, num_local_crops=2)
    assert method.num_views == 4 and method.num_local_views == 2
    assert torch.isfinite(method.training_loss(make_views(4), progress=0.1))


def test_multicrop_local_views_are_predicted_but_get_no_codes(backbone, digits_batch, loss_before_after) -> None:
    torch.manual_seed(0)
    augment = MultiViewAugment(num_views=2, num_local_views=4, local_size=7, local_crop_scale=(0.05, 0.14), flip=False)
    views = augment(digits_batch)
    assert [v.shape[-1] for v in views] == [16, 16, 7, 7, 7, 7]
    method = _method(backbone, num_local_crops=4)
    forward = method.criterion.forward
    calls: list[tuple[int, int]] = []

    def spy(high: list[torch.Tensor], low: list[torch.Tensor], queue: list[torch.Tensor] | None = None) -> torch.Tensor:
        calls.append((len(high), len(low)))
        return forward(high, low, queue)

    method.criterion.forward = spy
    before, after = loss_before_after(method, views, steps=8)
    assert after < before
    assert set(calls) == {(2, 4)}  # codes from the 2 global views; the 4 local views only predict
