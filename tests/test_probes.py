"""The oracle probes against independent computations."""

from __future__ import annotations

import numpy as np
import torch

from sweeper.probes import knn_accuracy, linear_probe_accuracy


def _blobs(n: int, d: int, classes: int, spread: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    centres = torch.randn(classes, d, generator=torch.Generator().manual_seed(123)) * 3
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    return centres[labels] + spread * torch.randn(n, d, generator=g), labels


def test_knn_matches_a_brute_force_numpy_vote() -> None:
    train_x, train_y = _blobs(200, 8, 4, spread=2.5, seed=1)
    test_x, test_y = _blobs(60, 8, 4, spread=2.5, seed=2)
    ours = knn_accuracy(train_x, train_y, test_x, test_y, k=20, temperature=0.07, chunk_size=7)

    a = train_x.numpy() / np.linalg.norm(train_x.numpy(), axis=1, keepdims=True)
    b = test_x.numpy() / np.linalg.norm(test_x.numpy(), axis=1, keepdims=True)
    correct = 0
    for row, label in zip(b, test_y.numpy(), strict=True):
        sims = a @ row
        top = np.argsort(-sims)[:20]
        votes = np.zeros(4)
        for j in top:
            votes[train_y[j]] += np.exp(sims[j] / 0.07)
        correct += int(votes.argmax() == label)
    assert ours == correct / len(test_y)
    assert 0.3 < ours < 1.0  # a non-trivial case


def test_linear_probe_separates_separable_data_and_not_noise() -> None:
    train_x, train_y = _blobs(400, 16, 5, spread=0.5)
    test_x, test_y = _blobs(100, 16, 5, spread=0.5, seed=3)
    assert linear_probe_accuracy(train_x, train_y, test_x, test_y, epochs=30) > 0.95
    noise = torch.randn(400, 16)
    random_labels = torch.randint(0, 5, (400,))
    acc = linear_probe_accuracy(noise[:300], random_labels[:300], noise[300:], random_labels[300:], epochs=30)
    assert acc < 0.45  # chance is 0.2
