"""Upload an exported folder to the Hugging Face Hub as a dataset repository.

Small folders go up in one commit. Large ones go up one file per commit, data shards first and
the card last, so an interrupted upload never shows a card describing files that are not there,
and a retry only re-sends what is missing (the Hub skips files whose content it already has).
Files are passed by path: huggingface_hub streams them from disk.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ONE_COMMIT_LIMIT = 1 * 10**9  # bytes; above this every file gets its own commit
_TRUE = {"1", "on", "yes", "true"}


class PublishError(RuntimeError):
    """The folder cannot be published as asked (not an export, Hub unreachable by configuration)."""


@dataclass(frozen=True)
class PlannedFile:
    path: str  # in the repository, with forward slashes
    local: Path
    size: int


def upload_plan(folder: str | Path) -> list[PlannedFile]:
    """Every file that would be uploaded: data shards in name order, then the rest, README.md last.
    Hidden files and folders (temporary files of an export) are left out."""
    folder = Path(folder)
    if not (folder / "README.md").is_file():
        raise PublishError(f"{folder} has no README.md: it is not a finished export; run "
                           f"`prefcurate export DATASET_DIR {folder}` first")
    files = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if path.is_file() and not any(part.startswith(".") for part in relative.parts):
            files.append(PlannedFile(relative.as_posix(), path, path.stat().st_size))
    return sorted(files, key=lambda f: (f.path == "README.md", not f.path.startswith("data/"), f.path))


def format_bytes(n: int) -> str:
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def hub_offline() -> bool:
    return any(os.environ.get(name, "").strip().lower() in _TRUE for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def publish(folder: str | Path, repo_id: str, private: bool = False, token: str | None = None,
            one_commit_limit: int = ONE_COMMIT_LIMIT, message: str = "Upload prefcurate export") -> str:
    """Create (or reuse) the dataset repo ``repo_id`` and upload the folder; returns the repo URL."""
    plan = upload_plan(folder)
    if hub_offline():
        raise PublishError("HF_HUB_OFFLINE=1 is set, so the Hub cannot be reached: unset it (`unset HF_HUB_OFFLINE`, "
                           "and TRANSFORMERS_OFFLINE) on a machine with network access, or use --dry-run to list "
                           "what would be uploaded")
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(token=token)
    url = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    total = sum(f.size for f in plan)
    batches = [plan] if total <= one_commit_limit else [[f] for f in plan]
    for i, batch in enumerate(batches):
        suffix = f" ({i + 1}/{len(batches)}: {batch[0].path})" if len(batches) > 1 else ""
        api.create_commit(repo_id, repo_type="dataset", commit_message=message + suffix,
                          operations=[CommitOperationAdd(path_in_repo=f.path, path_or_fileobj=str(f.local))
                                      for f in batch])
    return str(url)
