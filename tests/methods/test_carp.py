"""CARP: the random-partition loss against an independent computation of papers/002 eq. 4, the
partition itself, the EMA teacher and the embedding/prototype shapes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sweeper.methods.carp import CARP, carp_loss, random_partition

K = 24


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def _carp_np(
    student: list[np.ndarray], teacher: list[np.ndarray], blocks: np.ndarray, entropy_weight: float = 1.0
) -> float:
    """1/(N·N_P) Σ_i Σ_j [−log⟨s¹_ij, t²_ij⟩ − log⟨s²_ij, t¹_ij⟩] + λ_e/N_P Σ_j [log N_B − H(p̄_j)]."""
    n = len(student[0])
    n_p, n_b = blocks.shape
    consistency = 0.0
    entropy_term = 0.0
    for j in range(n_p):
        idx = blocks[j]
        s = [[_softmax(view[i, idx]) for i in range(n)] for view in student]
        t = [[_softmax(view[i, idx]) for i in range(n)] for view in teacher]
        for i in range(n):
            consistency += -math.log(float(s[0][i] @ t[1][i])) - math.log(float(s[1][i] @ t[0][i]))
        mean = np.mean([*s[0], *s[1], *t[0], *t[1]], axis=0)
        entropy_term += math.log(n_b) + float(np.sum(mean * np.log(mean)))
    return consistency / (n * n_p) + entropy_weight * entropy_term / n_p


@pytest.mark.parametrize(("block_size", "entropy_weight"), [(4, 1.0), (8, 1.0), (K, 1.0), (8, 0.0), (8, 0.3)])
def test_loss_matches_the_formula(block_size, entropy_weight) -> None:
    g = torch.Generator().manual_seed(0)
    student = [torch.randn(5, K, generator=g, dtype=torch.float64) * 2 for _ in range(2)]
    teacher = [torch.randn(5, K, generator=g, dtype=torch.float64) * 2 for _ in range(2)]
    blocks = torch.randperm(K, generator=g)[: K // block_size * block_size].view(-1, block_size)
    expected = _carp_np([s.numpy() for s in student], [t.numpy() for t in teacher], blocks.numpy(), entropy_weight)
    loss = carp_loss(student, teacher, blocks, entropy_weight=entropy_weight)
    assert float(loss) == pytest.approx(expected, rel=1e-10)


def test_random_partition_is_a_partition_redrawn_each_time() -> None:
    torch.manual_seed(0)
    first = random_partition(K, 8)
    assert first.shape == (3, 8)
    assert sorted(first.flatten().tolist()) == list(range(K))
    assert not torch.equal(first, random_partition(K, 8))
    assert random_partition(K, K).shape == (1, K)
    partial = random_partition(K, 10)  # K mod N_B prototypes sit out
    assert partial.shape == (2, 10) and len(set(partial.flatten().tolist())) == 20


def test_rejects_blocks_larger_than_the_prototype_set(backbone) -> None:
    with pytest.raises(ValueError, match="block_size"):
        CARP(backbone, projector=[32, 16], num_prototypes=8, block_size=16, base_momentum=0.99, entropy_weight=1.0)


def test_teacher_is_an_ema_copy(backbone, make_views) -> None:
    method = CARP(backbone, projector=[32, 16], num_prototypes=K, block_size=8, base_momentum=0.9, entropy_weight=1.0)
    pairs = [(method.backbone, method.teacher_backbone), (method.projector, method.teacher_head)]
    for student, teacher in pairs:
        for s, t in zip(student.parameters(), teacher.parameters(), strict=True):
            assert torch.equal(s, t) and not t.requires_grad
    method.training_loss(make_views(2), progress=0.0).backward()
    with torch.no_grad():
        for p in method.parameters():
            if p.grad is not None:
                p.sub_(0.1 * p.grad)
    old_teacher = method.teacher_head.layers[0].weight.clone()
    method.after_step(progress=0.0)  # m = base = 0.9 at the start of training
    student = method.projector.layers[0].weight.detach()
    assert torch.allclose(method.teacher_head.layers[0].weight, 0.9 * old_teacher + 0.1 * student, atol=1e-7)
    assert not torch.equal(method.teacher_head.layers[0].weight, student)


def test_embedding_is_the_raw_bottleneck_and_prototypes_keep_unit_norm(
    backbone, make_views, loss_before_after, digits_batch
) -> None:
    method = CARP(backbone, projector=[64, 32], num_prototypes=64, block_size=16, base_momentum=0.9, entropy_weight=1.0)
    loss_before_after(method, make_views(2), steps=3, lr=3e-3)
    method.eval()
    representation, embedding = method.embed(digits_batch[:5])
    assert torch.equal(embedding, method.projector.layers(representation))  # no ℓ2 normalisation
    prototypes = method.prototypes()
    assert prototypes.shape == (64, 32)
    assert torch.allclose(prototypes.norm(dim=1), torch.ones(64), atol=1e-5)
