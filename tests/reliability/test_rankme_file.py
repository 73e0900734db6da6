"""``sweeper rankme FILE`` on anything but a clean (N, K) real matrix: one line, exit 2."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from sweeper import embeddings
from sweeper.cli import main


def _npy(array: np.ndarray) -> Callable[[Path], Path]:
    def write(path: Path) -> Path:
        np.save(path / "z.npy", array, allow_pickle=True)
        return path / "z.npy"

    return write


def _pt(value: object) -> Callable[[Path], Path]:
    def write(path: Path) -> Path:
        torch.save(value, path / "z.pt")
        return path / "z.pt"

    return write


def _raw(name: str, data: bytes) -> Callable[[Path], Path]:
    def write(path: Path) -> Path:
        (path / name).write_bytes(data)
        return path / name

    return write


BAD_FILES = {
    "empty file": (_raw("z.npy", b""), "the file is empty"),
    "text named .npy": (_raw("z.npy", b"not an array\n"), "not a plain numeric .npy array"),
    "text named .pt": (_raw("z.pt", b"not a tensor\n"), "not a torch.save file"),
    "NaN": (_npy(np.array([[1.0, np.nan], [2.0, 3.0], [4.0, 5.0]])), "NaN or infinite"),
    "inf": (_npy(np.array([[1.0, np.inf], [2.0, 3.0]])), "NaN or infinite"),
    "object dtype": (_npy(np.array([{"a": 1}, {"b": 2}], dtype=object)), "not a plain numeric .npy array"),
    "string dtype": (_npy(np.array([["a", "b"], ["c", "d"]])), "is not real numbers"),
    "complex dtype": (_npy(np.ones((4, 3), dtype=complex)), "is not real numbers"),
    "complex tensor": (_pt(torch.ones(4, 3, dtype=torch.complex64)), "is not real numbers"),
    "0 rows": (_npy(np.ones((0, 3))), "too few rows"),
    "1 row": (_npy(np.ones((1, 3))), "too few rows"),
    "1-D": (_npy(np.ones(5)), "expected an (N, K) matrix"),
    "3-D tensor": (_pt(torch.ones(2, 3, 4)), "expected an (N, K) matrix"),
    ".pt dict": (_pt({"z": torch.ones(3, 2)}), "holds a dict, not a tensor"),
    ".pt list": (_pt([torch.ones(3, 2)]), "holds a list, not a tensor"),
    "unknown suffix": (_raw("z.csv", b"1,2\n3,4\n"), "unknown file type"),
    "missing": (lambda path: path / "absent.npy", "no such file"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_a_bad_embedding_file_is_one_line(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write, problem = BAD_FILES[case]
    path = write(tmp_path)
    assert main(["rankme", str(path)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"sweeper: error: {path}: ") and problem in lines[0]
    assert "Traceback" not in captured.err and not captured.out


def test_a_matrix_that_cannot_fit_is_refused_before_loading(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    np.save(tmp_path / "z.npy", np.ones((300, 200), dtype=np.float32))
    monkeypatch.setattr(embeddings, "_physical_memory", lambda: 2 * 8 * (300 * 200 + 200**2) - 1)
    assert main(["rankme", str(tmp_path / "z.npy")]) == 2
    assert "use a subsample of the rows" in capsys.readouterr().err


@pytest.mark.parametrize("shape", [(2, 60000), (60000, 2)])
def test_work_is_bounded_by_the_smaller_side(shape: tuple[int, int], tmp_path: Path) -> None:
    """A (2, 60000) matrix would need a 28 GB K x K Gram; the metrics use the 2 x 2 one."""
    z = np.random.default_rng(0).standard_normal(shape)
    np.save(tmp_path / "z.npy", z)
    values = embeddings.embedding_metrics(embeddings.load_embeddings(tmp_path / "z.npy"))
    s = np.linalg.svd(z, compute_uv=False)
    p = s / s.sum() + 1e-7
    assert values["rankme"] == pytest.approx(float(np.exp(-(p * np.log(p)).sum())), rel=1e-9)
    assert values["classical_rank"] == 2


def test_an_upper_case_suffix_and_integer_tensor_are_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    z = np.random.default_rng(1).integers(-5, 5, size=(64, 8))
    with open(tmp_path / "Z.NPY", "wb") as handle:
        np.save(handle, z)
    assert main(["rankme", str(tmp_path / "Z.NPY")]) == 0
    assert "N=64 K=8" in capsys.readouterr().out
    torch.save(torch.from_numpy(z), tmp_path / "z.PT")
    assert main(["rankme", str(tmp_path / "z.PT")]) == 0
