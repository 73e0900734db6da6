"""DINO: cross-entropy with centring and temperatures against the paper's formula, the τ_t
warm-up, the frozen last layer, the teacher and the embedding/prototype shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sweeper.data import MultiViewAugment
from sweeper.hyperparams import DINOParams
from sweeper.methods.dino import DINO, teacher_temperature

K = 24


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _dino_np(teacher: list[np.ndarray], student: list[np.ndarray], center: np.ndarray, tt: float, ts: float) -> float:
    """mean over (teacher view t, student view s ≠ t) of mean_b −Σ_k P_t log P_s (papers/003 Alg. 1)."""
    terms = []
    for i, t in enumerate(teacher):
        p_t = _softmax((t - center) / tt)
        for j, s in enumerate(student):
            if i != j:
                terms.append(np.mean(-np.sum(p_t * np.log(_softmax(s / ts)), axis=1)))
    return float(np.mean(terms))


def _method(backbone, **overrides) -> DINO:
    params = DINOParams(num_prototypes=K, **overrides).model_dump()
    return DINO(backbone, projector=[32, 16], **params)


@pytest.mark.parametrize("local_views", [0, 2])
def test_loss_and_centre_match_the_formula(backbone, local_views) -> None:
    method = _method(backbone, center_momentum=0.9, student_temp=0.1)
    g = torch.Generator().manual_seed(0)
    teacher = [torch.randn(6, K, generator=g) for _ in range(2)]
    student = [torch.randn(6, K, generator=g) for _ in range(2 + local_views)]
    t_np, s_np = [t.double().numpy() for t in teacher], [s.double().numpy() for s in student]

    first = method.criterion(teacher, student, teacher_temp=0.05)
    assert float(first) == pytest.approx(_dino_np(t_np, s_np, np.zeros(K), 0.05, 0.1), rel=1e-5)
    # c ← m c + (1 − m) mean over the teacher's views and batch
    centre = 0.1 * np.concatenate(t_np).mean(axis=0)
    assert method.criterion.center.flatten().double().numpy() == pytest.approx(centre, abs=1e-6)
    second = method.criterion(teacher, student, teacher_temp=0.07)
    assert float(second) == pytest.approx(_dino_np(t_np, s_np, centre, 0.07, 0.1), rel=1e-5)


def test_teacher_temperature_warms_up_linearly() -> None:
    schedule = {"warmup_temp": 0.04, "final_temp": 0.07, "warmup_fraction": 0.3}
    assert teacher_temperature(0.0, **schedule) == pytest.approx(0.04)
    assert teacher_temperature(0.15, **schedule) == pytest.approx(0.055)
    assert teacher_temperature(0.3, **schedule) == pytest.approx(0.07)
    assert teacher_temperature(0.9, **schedule) == pytest.approx(0.07)
    assert teacher_temperature(0.0, **{**schedule, "warmup_fraction": 0.0}) == pytest.approx(0.07)


def test_last_layer_frozen_during_the_first_epoch(backbone, make_views) -> None:
    method = _method(backbone, freeze_last_layer_epochs=1)
    for epoch, frozen in [(0, True), (1, False)]:
        method.zero_grad(set_to_none=True)
        method.training_loss(make_views(2), progress=0.0).backward()
        method.before_optimizer_step(progress=0.0, epoch=epoch)
        assert (method.projector.last_layer.weight_v.grad is None) is frozen
        assert method.projector.layers[0].weight.grad is not None


def test_teacher_starts_as_the_student_and_has_no_gradients(backbone) -> None:
    method = _method(backbone)
    pairs = [(method.backbone, method.teacher_backbone), (method.projector, method.teacher_head)]
    for student, teacher in pairs:
        for s, t in zip(student.parameters(), teacher.parameters(), strict=True):
            assert torch.equal(s, t) and not t.requires_grad


def test_multicrop_asks_for_more_views(backbone, make_views) -> None:
    method = _method(backbone, num_local_crops=2)
    assert method.num_views == 4 and method.num_local_views == 2
    assert torch.isfinite(method.training_loss(make_views(4), progress=0.1))


def test_embedding_is_the_l2_bottleneck_and_prototypes_keep_unit_norm(
    backbone, make_views, loss_before_after, digits_batch
) -> None:
    method = _method(backbone, base_momentum=0.9)
    loss_before_after(method, make_views(2), steps=3, epoch=1)
    method.eval()
    _, embedding = method.embed(digits_batch[:5])
    assert embedding.shape == (5, 16)
    assert torch.allclose(embedding.norm(dim=1), torch.ones(5), atol=1e-5)  # ℓ2 bottleneck
    prototypes = method.prototypes()
    assert prototypes.shape == (K, 16)
    assert torch.allclose(prototypes.norm(dim=1), torch.ones(K), atol=1e-5)  # weight norm g = 1


def test_multicrop_local_views_train_the_student_only(backbone, digits_batch, loss_before_after) -> None:
    torch.manual_seed(0)
    augment = MultiViewAugment(num_views=2, num_local_views=4, local_size=7, flip=False)
    views = augment(digits_batch)
    assert [v.shape[-1] for v in views] == [16, 16, 7, 7, 7, 7]
    method = _method(backbone, num_local_crops=4, base_momentum=0.9)
    seen = {"student": [], "teacher": []}
    for role, network in (("student", method._student), ("teacher", method._teacher)):
        setattr(method, f"_{role}", lambda x, role=role, net=network: seen[role].append(x.shape[-1]) or net(x))
    before, after = loss_before_after(method, views, epoch=1)
    assert after < before
    # per call: the student gets the global pair, then the local views (one batch per size);
    # the teacher only the global pair
    assert set(seen["student"]) == {16, 7} and set(seen["teacher"]) == {16}
    assert len(seen["student"]) == 2 * len(seen["teacher"])
