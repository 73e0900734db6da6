"""Relative paths and store URIs made absolute once, at load: a trial worker (another
directory, another node) and a later resume read the same files."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator


def absolute_path(path: Path) -> Path:
    """``~`` expanded and relative to the current directory, resolved once at load: a trial
    worker (another directory, another node) and a later resume read the same path."""
    return Path(os.path.abspath(path.expanduser()))


AbsolutePath = Annotated[Path, AfterValidator(absolute_path)]


def absolute_sqlite(uri: str) -> str:
    """``sqlite:///mlflow.db`` (relative to the current directory) as ``sqlite:////abs/mlflow.db``;
    other URIs (absolute sqlite, ``:memory:``, servers) unchanged."""
    match = re.fullmatch(r"(?i)(sqlite(?:\+\w+)?:///)([^?]*)(\?.*)?", uri)
    if match is None or not match[2] or match[2].startswith(("/", ":memory:")):
        return uri
    return f"{match[1]}{absolute_path(Path(match[2]))}{match[3] or ''}"
