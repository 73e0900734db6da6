"""RankMe against an independent float64 numpy computation (numpy.linalg.svd in the test)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sweeper.metrics import rankme, rankme_from_singular_values, singular_values

EPS = 1e-7


def ref_rankme(z: np.ndarray, eps: float = EPS) -> float:
    """The paper's formula, float64 SVD, written out independently of sweeper."""
    s = np.linalg.svd(np.asarray(z, dtype=np.float64), compute_uv=False)
    p = s / s.sum() + eps
    return float(np.exp(-np.sum(p * np.log(p))))


def closed_form(s: np.ndarray, m: int, eps: float = EPS) -> float:
    """RankMe of a matrix whose min(N, K) = m singular values are s (padded with zeros)."""
    full = np.zeros(m)
    full[: len(s)] = s
    p = full / full.sum() + eps
    return float(np.exp(-np.sum(p * np.log(p))))


def with_spectrum(n: int, k: int, s: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """U diag(s) Vᵀ with random orthonormal U (n × r), V (k × r): singular values exactly s."""
    r = len(s)
    u, _ = np.linalg.qr(rng.standard_normal((n, r)))
    v, _ = np.linalg.qr(rng.standard_normal((k, r)))
    return (u * s) @ v.T


def rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.mark.parametrize("k_equal", [1, 7, 32])
def test_k_equal_singular_values_give_k(rng: np.random.Generator, k_equal: int) -> None:
    n, k = 600, 64
    z = with_spectrum(n, k, np.full(k_equal, 3.0), rng)
    value = rankme(z)
    assert rel(value, closed_form(np.full(k_equal, 3.0), k)) < 1e-9
    # ε = 1e-7 adds ~K·ε·|log ε| ≈ K·1.6e-6 to the entropy.
    assert rel(value, k_equal) < k * 2e-6


def test_rank_one_is_about_one(rng: np.random.Generator) -> None:
    z = np.outer(rng.standard_normal(500), rng.standard_normal(40))
    value = rankme(z)
    assert 1.0 <= value < 1.0 + 40 * 2e-6
    assert rel(value, ref_rankme(z)) < 1e-6


@pytest.mark.parametrize("a", [0.5, 1.0, 2.0])
def test_power_law_spectrum_closed_form(rng: np.random.Generator, a: float) -> None:
    n, k = 1000, 100
    s = np.arange(1, k + 1, dtype=np.float64) ** -a
    z = with_spectrum(n, k, s, rng)
    assert rel(rankme(z), closed_form(s, k)) < 1e-9


def test_scale_and_rotation_invariance(rng: np.random.Generator) -> None:
    z = with_spectrum(400, 50, np.arange(1, 51, dtype=np.float64) ** -1.0, rng)
    base = rankme(z)
    for c in (1e-6, 1e-3, 7.0, 1e5):
        assert rel(rankme(c * z), base) < 1e-9
    q, _ = np.linalg.qr(rng.standard_normal((50, 50)))
    assert rel(rankme(z @ q), base) < 1e-9
    p, _ = np.linalg.qr(rng.standard_normal((400, 400)))  # left rotation too
    assert rel(rankme(p @ z), base) < 1e-9


@pytest.mark.parametrize("shape", [(40, 300), (60, 100), (100, 100), (150, 80)])
def test_any_aspect_ratio_matches_svd(rng: np.random.Generator, shape: tuple[int, int]) -> None:
    # (40, 300): Gram of ZZᵀ; (60, 100), (100, 100), (150, 80): float64 SVD.
    z = rng.standard_normal(shape) * np.linspace(1.0, 0.01, shape[1])
    assert rel(rankme(z), ref_rankme(z)) < 1e-9
    assert rankme(z) <= min(shape) * (1 + 1e-4)


def _hard_cases(rng: np.random.Generator) -> dict[str, np.ndarray]:
    n, k = 1024, 96
    cases = {}
    for r in (1, 5, 60):  # exactly low rank: σ below 1e-8·σ_max, where a plain Gram is noise
        cases[f"rank{r}"] = rng.standard_normal((n, r)) @ rng.standard_normal((r, k))
    for a in (0.5, 1.0, 4.0):  # steep power law: σ_K / σ_1 = 96**-4 ≈ 1e-8
        cases[f"power{a}"] = with_spectrum(n, k, np.arange(1, k + 1, dtype=np.float64) ** -a, rng)
    dead = rng.standard_normal((n, k))
    dead[:, :40] = 0.0  # dead units
    cases["dead_columns"] = dead
    cases["large_mean"] = rng.standard_normal((n, k)) * 1e-3 + 5.0
    cases["relu"] = np.maximum(rng.standard_normal((n, k)) @ np.diag(np.linspace(1, 0.01, k)) + 0.3, 0)
    return cases


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tall_gram_path_matches_float64_svd(rng: np.random.Generator, dtype: type) -> None:
    for name, z in _hard_cases(rng).items():
        z = z.astype(dtype)
        expected = ref_rankme(z)  # float64 SVD of the (possibly float32) values
        for value in (rankme(z), rankme(torch.from_numpy(z)), rankme(torch.from_numpy(z.T.copy()))):
            assert rel(value, expected) < 1e-6, (name, value, expected)


def test_zero_matrix_is_one_and_finite() -> None:
    assert rankme(np.zeros((100, 10))) == 1.0
    assert rankme(torch.zeros(5, 300)) == 1.0
    assert rankme_from_singular_values(torch.zeros(7)) == 1.0


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_raises(bad: float) -> None:
    z = torch.randn(50, 8)
    z[17, 3] = bad
    with pytest.raises(ValueError, match="non-finite"):
        rankme(z)
    with pytest.raises(ValueError, match="non-finite"):
        rankme(z.numpy())
    with pytest.raises(ValueError, match="non-finite"):
        singular_values(z)


def test_finite_values_whose_sum_overflows_are_accepted() -> None:
    z = torch.full((64, 4), 3e38, dtype=torch.float32)  # the float32 sum is inf, entries are not
    z[:, 1] *= -1
    assert rel(rankme(z), ref_rankme(z.numpy())) < 1e-9


def test_bad_shapes_raise() -> None:
    for bad in (torch.randn(10), torch.randn(2, 3, 4), torch.zeros(0, 5), torch.zeros(5, 0)):
        with pytest.raises(ValueError):
            rankme(bad)
    with pytest.raises(TypeError):
        rankme([[1.0, 2.0]])  # type: ignore[arg-type]


def test_numpy_and_torch_inputs_agree(rng: np.random.Generator) -> None:
    z = rng.standard_normal((300, 20)).astype(np.float32)
    assert rankme(z) == pytest.approx(rankme(torch.from_numpy(z)), rel=1e-12)
    readonly = z.copy()
    readonly.flags.writeable = False
    assert rankme(readonly) == pytest.approx(rankme(z), rel=1e-12)
    # Views torch.from_numpy rejects: negative strides, non-native byte order. Reordering rows or
    # transposing changes the rounding of the float32 Gram products, within its 1e-9 budget.
    assert rankme(z[::-1]) == pytest.approx(rankme(z), rel=1e-8)
    assert rankme(z.astype(">f4")) == pytest.approx(rankme(z), rel=1e-12)
    assert rankme(z.T) == pytest.approx(rankme(z), rel=1e-8)


def test_float32_products_only_where_their_rounding_is_negligible() -> None:
    from sweeper.metrics._utils import _float32_gram_singular_values

    g = torch.Generator().manual_seed(0)
    benign = torch.randn(4096, 256, generator=g) * torch.arange(1, 257).pow(-0.5)  # σ_i ∝ i^-1/2
    fast = _float32_gram_singular_values(benign, transpose=False)
    assert fast is not None
    assert rel(rankme_from_singular_values(fast), ref_rankme(benign.numpy())) < 1e-8
    steep = torch.randn(4096, 256, generator=g) * torch.arange(1, 257).pow(-2.5)  # σ_i ∝ i^-5/2
    low_rank = torch.randn(4096, 8, generator=g) @ torch.randn(8, 256, generator=g)
    for z in (steep, low_rank):
        assert _float32_gram_singular_values(z, transpose=False) is None
        assert rel(rankme(z), ref_rankme(z.numpy())) < 1e-6  # the float64 path took over


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.int32])
def test_other_dtypes(dtype: torch.dtype) -> None:
    z = (torch.randn(200, 16, generator=torch.Generator().manual_seed(1)) * 4).to(dtype)
    expected = ref_rankme(z.to(torch.float64).numpy())
    assert rel(rankme(z), expected) < 1e-9


def test_max_samples_uses_first_rows(rng: np.random.Generator) -> None:
    z = rng.standard_normal((500, 30))
    z[100:] *= np.linspace(1, 1e-3, 30)  # later rows have another spectrum
    assert rankme(z, max_samples=100) == pytest.approx(ref_rankme(z[:100]), rel=1e-9)
    assert rankme(z, max_samples=None) == pytest.approx(ref_rankme(z), rel=1e-9)
    assert rankme(z, max_samples=10_000) == pytest.approx(ref_rankme(z), rel=1e-9)
    assert rankme(z, max_samples=100) != pytest.approx(rankme(z), rel=1e-3)
    with pytest.raises(ValueError):
        rankme(z, max_samples=0)


def test_default_max_samples_is_25600() -> None:
    z = torch.zeros(25_601, 2)
    z[:, 0] = 1.0
    z[-1] = torch.tensor([0.0, 1e6])  # row 25 601 would dominate the spectrum
    assert rankme(z) == pytest.approx(1.0, abs=1e-5)


def test_eps_is_used(rng: np.random.Generator) -> None:
    z = rng.standard_normal((200, 10))
    assert rankme(z, eps=0.0) == pytest.approx(ref_rankme(z, eps=0.0), rel=1e-9)
    assert rankme(z, eps=1e-3) == pytest.approx(ref_rankme(z, eps=1e-3), rel=1e-9)


def test_singular_values_float64_descending_cpu(rng: np.random.Generator) -> None:
    z = rng.standard_normal((700, 40)).astype(np.float32) * np.logspace(0, -6, 40).astype(np.float32)
    s = singular_values(z)
    assert s.dtype == torch.float64 and s.device.type == "cpu" and s.shape == (40,)
    assert bool((s[:-1] >= s[1:]).all())
    expected = np.linalg.svd(z.astype(np.float64), compute_uv=False)
    np.testing.assert_allclose(s.numpy(), expected, rtol=1e-9, atol=1e-12 * expected[0])
    assert singular_values(z, max_samples=10).shape == (10,)
    assert rankme_from_singular_values(s) == pytest.approx(ref_rankme(z), rel=1e-12)


def test_rankme_from_singular_values_validation() -> None:
    s = np.array([3.0, 1.0, 2.0])
    assert rankme_from_singular_values(s) == pytest.approx(rankme_from_singular_values(np.sort(s)))
    for bad in (np.array([1.0, -1.0]), np.array([1.0, np.nan]), np.zeros((2, 2)), np.zeros(0)):
        with pytest.raises(ValueError):
            rankme_from_singular_values(bad)


def test_gradients_are_not_required() -> None:
    z = torch.randn(100, 8, requires_grad=True)
    assert isinstance(rankme(z), float)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu() -> None:  # pragma: no cover - no GPU on the CI machine
    z = torch.randn(3000, 64) * torch.linspace(1, 1e-3, 64)
    assert rankme(z.cuda()) == pytest.approx(rankme(z), rel=1e-9)
