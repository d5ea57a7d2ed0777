"""The sample Feast repo shipped as package data, and ``init_sample``, which copies it for a user.

Kept apart from :mod:`.repo` (the demo's own repo, which needs Feast and pandas) so that
``feast-hexpire init-sample`` copies four files without importing Feast (seconds of CPU).
"""

from __future__ import annotations

import shutil
from pathlib import Path

__all__ = ["SAMPLE_FILES", "SAMPLE_REPO", "init_sample", "sample_file"]

# Shipped inside the package (package data), so wheel installs have it too.
SAMPLE_REPO = Path(__file__).resolve().parent.parent / "sample_repo"
SAMPLE_FILES = ("feature_store.yaml", "features.py", "generate_data.py", "push.py")


def sample_file(name: str) -> Path:
    path = SAMPLE_REPO / name
    if not path.exists():
        raise FileNotFoundError(f"the sample repo is missing from the installed package: {path}")
    return path


def init_sample(path: Path) -> Path:
    """Copy the sample repo as it ships (the yaml reads ``${REDIS_CONNECTION_STRING}``) to
    ``path``; refuses to overwrite any file already there."""
    existing = [name for name in SAMPLE_FILES if (path / name).exists()]
    if existing:
        raise FileExistsError(f"{path} already has {', '.join(existing)}; choose an empty directory")
    sources = [sample_file(name) for name in SAMPLE_FILES]
    path.mkdir(parents=True, exist_ok=True)
    for source in sources:
        shutil.copy(source, path / source.name)
    return path
