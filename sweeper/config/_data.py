"""The ``data`` section: which data set, where its files are, and how its views are cropped."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from sweeper import registry
from sweeper.config._checks import located
from sweeper.config._paths import AbsolutePath
from sweeper.config._types import NonNegativeInt, PositiveInt, Strict, resolving, search_dirs
from sweeper.errors import ConfigError

# The MNIST-format data sets, read from IDX files, and their torchvision folder (<root>/<folder>/raw/).
IDX_DATASETS: dict[str, str] = {"fashion_mnist": "FashionMNIST", "mnist": "MNIST"}


class DataConfig(Strict):
    # A built-in data set, a registered name, an entry point or module:factory (a plugin, whose
    # arguments are dataset_args; see sweeper.data.load_dataset).
    dataset: str = "digits"
    dataset_args: dict[str, Any] = Field(default_factory=dict)
    root: AbsolutePath | None = None
    image_size: Annotated[int, Field(ge=8, le=1024)] = 16
    # A class-balanced random subset of the train split, this many images per class (None: all),
    # to size a sweep to a CPU; the test split always stays whole. It is drawn with its own
    # subset_seed, not the sweep's seed: every trial, seed repeats included, sees the same images.
    train_per_class: PositiveInt | None = None
    subset_seed: int = 0
    # None: on for natural images and Fashion-MNIST (a mirrored garment is one of the same class),
    # off for digits and MNIST (a mirrored digit is not a digit).
    flip: bool | None = None
    # Area range of the global views' random resized crops; None: (0.3, 1), or with multi-crop
    # (method.params.num_local_crops > 0) (local_crop_scale[1], 1) as DINO (0.4, 1) and SwAV (0.14, 1).
    crop_scale: tuple[float, float] | None = None
    local_crop_scale: tuple[float, float] = (0.05, 0.4)  # multi-crop local views (DINO; SwAV: 0.05-0.14)
    local_crop_size: Annotated[int, Field(ge=4)] | None = None  # None: image_size · 96/224, as DINO/SwAV
    # imagefolder: decode into memory (true), stream from disk through DataLoader workers (false),
    # or auto: stream when the decoded train/ split would exceed 4 GiB (e.g. ImageNet).
    in_memory: bool | Literal["auto"] = "auto"
    num_workers: NonNegativeInt | None = None  # decoding workers; None: min(4, CPUs - 1)

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, name: str, info: ValidationInfo) -> str:
        if not resolving(info):
            return name
        try:
            return registry.resolve("dataset", name, search_dirs=search_dirs(info)).target
        except ConfigError as exc:
            raise located((), str(exc).partition(": ")[2]) from None

    @property
    def builtin(self) -> bool:
        """A data set sweeper ships (its files come from ``root``), not a plugin's factory."""
        return registry.is_builtin("dataset", self.dataset)

    @property
    def display_name(self) -> str:
        """The data set's name in metric keys (``oracle/linear/<name>``) and reports: an
        ImageFolder's root folder, a plugin's factory name, else the built-in name."""
        if self.dataset == "imagefolder" and self.root is not None:
            return Path(self.root).expanduser().name
        if not self.builtin:
            return self.dataset.rpartition(":")[2].rpartition(".")[2]
        return self.dataset

    @field_validator("crop_scale", "local_crop_scale")
    @classmethod
    def _area_range(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not 0 < value[0] < value[1] <= 1:
            raise ValueError(f"an area range [low, high] with 0 < low < high <= 1 expected, got {list(value)}")
        return value

    @model_validator(mode="after")
    def _local_crops_and_streaming(self) -> DataConfig:
        if self.local_crop_size is not None and self.local_crop_size > self.image_size:
            raise ValueError(
                f"local_crop_size {self.local_crop_size} exceeds image_size {self.image_size}: "
                "local crops are the small views"
            )
        if self.in_memory is False and self.dataset != "imagefolder":
            raise ValueError(f"in_memory: false (streaming) is for imagefolder roots; {self.dataset} fits in memory")
        return self

    @model_validator(mode="after")
    def _arguments_fit(self) -> DataConfig:
        if self.builtin and self.dataset_args:
            raise ValueError(
                f"dataset_args are the arguments of a data-set plugin's factory; the built-in {self.dataset} "
                "takes none: remove them (its settings are data.root, data.train_per_class, ...)"
            )
        if not self.builtin and self.root is not None:
            raise ValueError(
                "data.root is for the built-in data sets; a plugin's factory takes its arguments (a root "
                "included) from data.dataset_args"
            )
        return self

    @model_validator(mode="after")
    def _root_exists(self, info: ValidationInfo) -> DataConfig:
        # A saved sweep read elsewhere (status, compare) needs no data: the run's preflight
        # checks the roots, on the machine that trains.
        if not resolving(info):
            return self
        problem = self.root_problem()
        if problem is not None:
            raise ValueError(problem)
        return self

    def root_problem(self, *, key: str = "root") -> str | None:
        """What ``root`` lacks for a built-in data set that reads files (None: nothing)."""
        if self.dataset == "digits" or not self.builtin:
            return None
        if self.dataset in IDX_DATASETS:
            return self.missing_idx_message(key=key) if self.idx_files() is None else None
        if self.root is None:
            return f"dataset {self.dataset!r} needs a local data root: set data.root to its directory"
        if not Path(self.root).expanduser().is_dir():
            return (
                f"data root {str(self.root)!r} does not exist: point data.root at the "
                f"{self.dataset} directory (nothing is downloaded)"
            )
        return None

    def idx_files(self) -> dict[str, tuple[Path, Path]] | None:
        """fashion_mnist, mnist: the (images, labels) IDX files of the ``train`` and ``test``
        splits under ``root``, each uncompressed or gzipped (``.gz``), flat in ``root`` or in
        torchvision's ``<root>/FashionMNIST/raw/`` (``<root>/MNIST/raw/``); None when no such
        folder holds all four (or for another dataset)."""
        if self.root is None or self.dataset not in IDX_DATASETS:
            return None
        stems = {
            "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
            "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
        }
        root = Path(self.root).expanduser()
        for folder in (root, root / IDX_DATASETS[self.dataset] / "raw"):
            found = {
                split: (self._idx_file(folder, images), self._idx_file(folder, labels))
                for split, (images, labels) in stems.items()
            }
            if all(path is not None for pair in found.values() for path in pair):
                return found  # type: ignore[return-value]
        return None

    @staticmethod
    def _idx_file(folder: Path, stem: str) -> Path | None:
        # The uncompressed file first: torchvision's raw/ keeps both, and it reads faster.
        return next((path for path in (folder / stem, folder / f"{stem}.gz") if path.is_file()), None)

    def missing_idx_message(self, *, key: str = "data.root") -> str:
        """The one-line fix for a fashion_mnist/mnist ``root`` without the IDX files."""
        folder = IDX_DATASETS[self.dataset]
        title = "Fashion-MNIST" if self.dataset == "fashion_mnist" else "MNIST"
        files = (
            f"{title} IDX files (train-/t10k-images-idx3-ubyte, train-/t10k-labels-idx1-ubyte; "
            f".gz or not; flat or in {folder}/raw/)"
        )
        where = f"{key} {str(self.root)!r} has no" if self.root is not None else f"{key} is not set: it needs the"
        if self.dataset == "fashion_mnist":
            fix = (
                "install Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist) "
                "and set data.root: /usr/share/datasets/fashion-mnist"
            )
        else:
            fix = "put MNIST's four IDX files there (nothing is downloaded) and set data.root to that directory"
        return f"{where} {files}: {fix}"
