"""IDX files, the format of MNIST and Fashion-MNIST, read with numpy.

The format (LeCun et al., "Gradient-based learning applied to document recognition", 1998;
http://yann.lecun.com/exdb/mnist/): a 4-byte magic number ``00 00 <dtype> <ndim>``, then
``ndim`` big-endian uint32 sizes, then the values in row-major order. Both data sets store
unsigned bytes (dtype ``0x08``): images (N, 28, 28) and labels (N,).

torchvision 0.29's ``read_image_file``/``read_label_file`` open the path with a plain
``open()`` (no gzip, which is how Debian's ``dataset-fashion-mnist`` ships the files) and check
the header with ``assert``, so a damaged file would surface as an ``AssertionError`` or a
reshape error naming neither the file nor the problem; hence this small reader.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from sweeper.errors import DataError

__all__ = ["read_idx", "read_idx_split"]

_UNSIGNED_BYTE = 0x08
_MAGIC_BYTES = 4
_SIZE_BYTES = 4


def read_idx(path: Path, *, ndim: int) -> np.ndarray:
    """The uint8 array stored in the IDX file ``path`` (gzipped when its name ends in ``.gz``),
    of shape given by its header, which must declare ``ndim`` dimensions.

    Raises:
        DataError: naming the file and the problem: not gzip data, wrong magic number, a
            dtype other than unsigned bytes, another number of dimensions, or a payload
            shorter (truncated) or longer than the header's sizes.
    """
    data = _read_bytes(path)
    if len(data) < _MAGIC_BYTES or data[0] != 0 or data[1] != 0:
        raise DataError(f"{path}: not an IDX file (wrong magic number {data[:_MAGIC_BYTES].hex() or 'none'})")
    dtype, dims = data[2], data[3]
    if dtype != _UNSIGNED_BYTE:
        raise DataError(f"{path}: IDX dtype 0x{dtype:02x} is not supported (MNIST files hold unsigned bytes, 0x08)")
    if dims != ndim:
        raise DataError(f"{path}: an IDX file of {dims} dimensions, expected {ndim}")
    header = _MAGIC_BYTES + _SIZE_BYTES * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated IDX header ({len(data)} bytes, {header} expected)")
    shape = tuple(int(size) for size in np.frombuffer(data, dtype=">u4", count=ndim, offset=_MAGIC_BYTES))
    expected = int(np.prod(shape))
    found = len(data) - header
    if found != expected:
        problem = "truncated" if found < expected else "has trailing bytes"
        raise DataError(
            f"{path}: IDX file {problem}: its header says {'×'.join(map(str, shape))} = {expected} values, "
            f"it holds {found}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def read_idx_split(images: Path, labels: Path, *, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One split: uint8 images (N, H, W) from ``images`` and int64 labels (N,) in
    ``[0, num_classes)`` from ``labels``; a count mismatch or a label out of range is a
    :class:`DataError` naming both files."""
    pixels = read_idx(images, ndim=3)
    targets = read_idx(labels, ndim=1).astype(np.int64)
    if len(pixels) != len(targets):
        raise DataError(f"{images} holds {len(pixels)} images but {labels} holds {len(targets)} labels")
    if len(targets) and int(targets.max()) >= num_classes:
        raise DataError(f"{labels}: label {int(targets.max())} is outside 0..{num_classes - 1}")
    return pixels, targets


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix != ".gz":
            return path.read_bytes()
        with gzip.open(path, "rb") as file:
            return file.read()
    except EOFError:
        raise DataError(f"{path}: truncated gzip file (it ends before the end-of-stream marker)") from None
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise DataError(f"{path}: not readable gzip data ({exc})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc})") from None
