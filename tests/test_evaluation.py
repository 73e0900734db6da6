"""The Evaluator on its own: label-free metrics against float64 numpy, the spectrum, LiDAR's
views, the oracle keys and the OOD datasets (through the trainer: tests/test_engine_ood.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sweeper.config import SweeperConfig, load_config
from sweeper.data import DatasetSplits, MultiViewAugment, load_dataset
from sweeper.data.augment import normalize
from sweeper.engine import Trainer
from sweeper.evaluation import Evaluator, _to_channels, to_device_floats
from sweeper.methods import SSLMethod, build_method
from sweeper.metrics import lidar

pytestmark = pytest.mark.usefixtures("one_thread")

SAMPLES = 300
TINY = {
    "name": "evaluation-test",
    "data": {"image_size": 8},
    "model": {"projector": [32, 16]},
    "train": {"epochs": 1, "batch_size": 128, "warmup_epochs": 0},
    "evaluation": {
        "every_n_epochs": 1,
        "rankme_samples": SAMPLES,
        "label_free": ["rankme", "classical_rank", "lidar"],
        "lidar_samples": 50,
        "lidar_views": 3,
        "linear_epochs": 5,
    },
    "selection": {"rule": "max"},
}


@pytest.fixture(scope="module")
def digits() -> DatasetSplits:
    return load_dataset(load_config(data=TINY).data)


def _config(**evaluation) -> SweeperConfig:
    return load_config(data={**TINY, "evaluation": {**TINY["evaluation"], **evaluation}})


def _evaluator(config: SweeperConfig, data: DatasetSplits, method: SSLMethod | None = None) -> Evaluator:
    if method is None:
        torch.manual_seed(0)
        method = build_method(config, in_channels=data.channels)
    return Evaluator(
        method,
        data,
        evaluation=config.evaluation,
        seed=config.seed,
        image_size=config.data.image_size,
        augment=MultiViewAugment(num_views=2, flip=False),
        device=torch.device("cpu"),
    )


def _rankme_float64(z: torch.Tensor) -> float:
    s = np.linalg.svd(z.numpy().astype(np.float64), compute_uv=False)
    p = s / s.sum() + 1e-7
    return float(np.exp(-(p * np.log(p)).sum()))


def _embeddings(method: SSLMethod, data: DatasetSplits) -> tuple[torch.Tensor, torch.Tensor]:
    method.eval()
    return method.embed(normalize(data.train.images[:SAMPLES]))


@pytest.fixture(scope="module")
def trained(digits) -> Trainer:
    trainer = Trainer(_config(oracle=[]), data=digits, device="cpu")
    list(trainer.epochs())
    return trainer


@pytest.mark.parametrize("state", ["untrained", "trained"])
def test_label_free_metrics_match_a_float64_svd_of_the_same_embeddings(state, digits, trained) -> None:
    evaluator = trained.evaluator if state == "trained" else _evaluator(_config(), digits)
    metrics = evaluator.label_free()
    representation, embedding = _embeddings(evaluator.method, digits)
    assert representation.shape == (SAMPLES, evaluator.method.representation_dim)
    assert embedding.shape == (SAMPLES, 16)
    assert metrics["rankme/embedding"] == pytest.approx(_rankme_float64(embedding), rel=1e-6)
    assert metrics["rankme/representation"] == pytest.approx(_rankme_float64(representation), rel=1e-6)
    assert metrics["rankme/embedding_clipped"] == min(metrics["rankme/embedding"], 128.0)
    assert metrics["label_free/classical_rank"] == np.linalg.matrix_rank(embedding.numpy())
    assert set(metrics) == {
        "rankme/embedding",
        "rankme/embedding_clipped",
        "rankme/representation",
        "label_free/classical_rank",
        "label_free/lidar",
    }


def test_spectrum_is_the_singular_values_of_the_embeddings(digits, trained) -> None:
    _, embedding = _embeddings(trained.method, digits)
    expected = np.linalg.svd(embedding.numpy().astype(np.float64), compute_uv=False)
    spectrum = trained.evaluator.embedding_spectrum()
    assert spectrum == pytest.approx(expected.tolist(), rel=1e-5, abs=1e-9)
    assert spectrum == sorted(spectrum, reverse=True)


def test_lidar_reads_augmented_views_of_the_first_clean_images(digits, trained) -> None:
    evaluator = trained.evaluator
    torch.manual_seed(7)
    value = evaluator.lidar()
    torch.manual_seed(7)
    chunk = digits.train.images[:50]  # views are normalised after augmentation, as in training
    views = torch.stack([evaluator.method.embed(normalize(evaluator.augment.view(chunk)))[1] for _ in range(3)], dim=1)
    assert views.shape == (50, 3, 16)
    assert value == lidar(views)


def _lidar_numpy(views: np.ndarray, delta: float = 1e-4, eps: float = 1e-7) -> float:
    """LiDAR (Thilak et al. 2024) from its definition, in float64 numpy."""
    views = views.astype(np.float64)
    n, q, k = views.shape
    means = views.mean(axis=1)
    centred = means - means.mean(axis=0)
    between = centred.T @ centred / (n - 1)
    spread = (views - means[:, None, :]).reshape(-1, k)
    within = spread.T @ spread / (n * (q - 1)) + delta * np.eye(k)
    lam_w, vec_w = np.linalg.eigh(within)
    inv_sqrt = (vec_w / np.sqrt(lam_w)) @ vec_w.T
    lam = np.clip(np.linalg.eigvalsh(inv_sqrt @ between @ inv_sqrt), 0.0, None)
    p = lam / lam.sum() + eps
    return float(np.exp(-(p * np.log(p)).sum()))


def _coherence_numpy(z: np.ndarray) -> tuple[float, float]:
    """Coherence and pseudo-condition (Tsitsulin et al. 2023) of the centred rows, numpy SVD."""
    centred = z.astype(np.float64) - z.astype(np.float64).mean(axis=0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    kept = int((s > s[0] * max(z.shape) * np.finfo(z.dtype).eps).sum())
    return float((u[:, :kept] ** 2).sum(axis=1).max() * len(z) / kept), float(s[0] / s[kept - 1])


def test_new_label_free_metrics_match_independent_computations(digits, trained) -> None:
    from scipy.spatial import cKDTree

    names = ["rankme", "coherence", "pseudo_condition", "intrinsic_dimension", "lidar", "lidar_representation"]
    evaluator = _evaluator(_config(label_free=names), digits, method=trained.method)
    evaluator.method.eval()
    torch.manual_seed(7)
    metrics = evaluator.label_free()
    _, embedding = _embeddings(evaluator.method, digits)
    z = embedding.numpy()
    value, condition = _coherence_numpy(z)
    assert metrics["label_free/coherence"] == pytest.approx(value, rel=1e-6)
    assert metrics["label_free/pseudo_condition"] == pytest.approx(condition, rel=1e-6)
    points = np.unique(z.astype(np.float64), axis=0)  # 300 rows: no subsample
    distances, _ = cKDTree(points).query(points, k=3)
    twonn = (len(points) - 1) / np.log(distances[:, 2] / distances[:, 1]).sum()
    assert metrics["label_free/intrinsic_dimension"] == pytest.approx(twonn, rel=1e-9)
    # Both LiDARs from the same augmented views of the first 50 images: backbone and projector.
    torch.manual_seed(7)
    chunk = digits.train.images[:50]
    pairs = [evaluator.method.embed(normalize(evaluator.augment.view(chunk))) for _ in range(3)]
    representation_views = torch.stack([pair[0] for pair in pairs], dim=1).numpy()
    embedding_views = torch.stack([pair[1] for pair in pairs], dim=1).numpy()
    assert representation_views.shape == (50, 3, 128)
    assert metrics["label_free/lidar_representation"] == pytest.approx(_lidar_numpy(representation_views), rel=1e-6)
    assert metrics["label_free/lidar"] == pytest.approx(_lidar_numpy(embedding_views), rel=1e-6)
    assert {f"label_free/{name}" for name in names[1:]} <= set(metrics)


def test_prototypes_get_their_rankme(digits) -> None:
    config = load_config(
        data={**TINY, "method": {"name": "dino", "params": {"num_prototypes": 24}}, "evaluation": {"oracle": []}}
    )
    evaluator = _evaluator(config, digits)
    metrics = evaluator.label_free()
    assert metrics["rankme/prototypes"] == pytest.approx(_rankme_float64(evaluator.method.prototypes()), rel=1e-6)


def test_representations_are_the_frozen_backbone_features(digits, trained) -> None:
    features = trained.evaluator.representations(digits.test)
    trained.method.eval()
    expected = trained.method.backbone(normalize(digits.test.images))
    assert features.shape == (len(digits.test), 128)
    assert torch.allclose(features, expected, atol=1e-6)


def test_oracle_keys_and_an_ood_copy_of_the_training_data(digits, trained) -> None:
    # The training dataset again as the OOD set: a unique name, and (same images) the same k-NN
    # accuracy; the OOD mean is the mean over that one set.
    config = _config(oracle_datasets=[{"dataset": "digits", "image_size": 16}])
    evaluator = _evaluator(config, digits, method=trained.method)
    (ood,) = evaluator.ood_splits
    assert ood.name == "digits-2" and ood.train.images.shape[1:] == (1, 8, 8)  # at data.image_size
    assert torch.equal(ood.test.images, digits.test.images)
    assert evaluator.ood_splits is evaluator.ood_splits  # loaded once
    metrics = evaluator.oracle()
    assert set(metrics) == {
        "oracle/linear/digits",
        "oracle/knn/digits",
        "oracle/linear/digits-2",
        "oracle/knn/digits-2",
        "oracle/linear/ood_mean",
        "time/oracle_s",
    }
    for probe in ("linear", "knn"):
        assert 0.1 < metrics[f"oracle/{probe}/digits"] <= 1.0
    assert metrics["oracle/knn/digits-2"] == metrics["oracle/knn/digits"]
    # The linear probe's batches follow ``seed`` but its initialisation the global RNG, which
    # the first probe has moved on: close, not equal.
    assert metrics["oracle/linear/digits-2"] == pytest.approx(metrics["oracle/linear/digits"], abs=0.03)
    assert metrics["oracle/linear/ood_mean"] == metrics["oracle/linear/digits-2"]


def test_no_oracle_configured_means_no_probe(digits) -> None:
    assert _evaluator(_config(oracle=[]), digits).oracle() == {}
    knn_only = _evaluator(_config(oracle=["knn"]), digits).oracle()
    assert set(knn_only) == {"oracle/knn/digits", "time/oracle_s"}


def test_uint8_batches_become_floats_in_unit_range() -> None:
    images = torch.tensor([[0, 51, 255]], dtype=torch.uint8)
    assert torch.equal(to_device_floats(images, torch.device("cpu")), torch.tensor([[0.0, 0.2, 1.0]]))
    floats = torch.rand(2, 3)
    assert to_device_floats(floats, torch.device("cpu")) is floats


def test_to_channels_converts_grey_and_rgb() -> None:
    rgb = torch.rand(2, 3, 4, 4)
    assert torch.allclose(_to_channels(rgb, 1), rgb.mean(dim=1, keepdim=True))
    grey = torch.rand(2, 1, 4, 4)
    assert torch.equal(_to_channels(grey, 3), grey.expand(2, 3, 4, 4))
    assert _to_channels(rgb, 3) is rgb
    with pytest.raises(ValueError, match="2-channel"):
        _to_channels(torch.rand(1, 2, 4, 4), 3)
