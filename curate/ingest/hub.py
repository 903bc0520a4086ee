"""Hugging Face Hub dataset repos, read shard by shard: list the parquet files, fetch each when its shard runs.

A repo's files become references ``hf://datasets/OWNER/NAME@REVISION/PATH`` at planning time (one
listing call, nothing downloaded); each ingest shard is one such file, downloaded into a temporary
folder when the shard runs and deleted after it. A finished shard is skipped on ``--resume`` (the
runner's per-shard records), so it is never downloaded again; the revision is part of the reference,
so the fingerprint changes when the repo does. ``--hub-mirror DIR`` serves the same references from
DIR/OWNER/NAME/PATH (a repo copied with ``hf download``, or one a test writes), through the same code.
"""
from __future__ import annotations

import fnmatch
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from curate.ingest.pickapic import SourceError, one_line
from curate.options import hub_offline

PREFIX = "hf://datasets/"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_REF = re.compile(r"^hf://datasets/(?P<repo>[^@]+)@(?P<revision>[^/]+)/(?P<path>.+)$")


_FILE_SUFFIXES = (".parquet", ".json", ".jsonl", ".ndjson", ".csv", ".tsv")


def looks_like_repo_id(source: str) -> bool:
    """``owner/name`` or ``owner/name:GLOB`` that is not a local path (nor a file name that is missing)."""
    repo = source.split(":", 1)[0]
    return bool(_REPO_ID.match(repo)) and not Path(repo).exists() and not repo.lower().endswith(_FILE_SUFFIXES)


def is_ref(path: str) -> bool:
    return str(path).startswith(PREFIX)


def parquet_refs(source: str, mirror: str | None) -> list[str]:
    """References of the repo's parquet files (all, or those matching ``owner/name:GLOB``), sorted."""
    repo, _, pattern = source.partition(":")
    if mirror:
        revision, files = "mirror", _mirror_files(Path(mirror) / repo, repo, mirror)
    else:
        revision, files = _hub_files(repo)
    chosen = sorted(f for f in files if f.endswith(".parquet") and fnmatch.fnmatch(f, pattern or "*"))
    if not chosen:
        raise SourceError(f"{repo}: no parquet files{f' matching {pattern!r}' if pattern else ''} in the dataset "
                          f"repo ({len(files)} files listed); check the id, or pass a local folder")
    return [f"{PREFIX}{repo}@{revision}/{f}" for f in chosen]


def _mirror_files(folder: Path, repo: str, mirror: str) -> list[str]:
    if not folder.is_dir():
        raise SourceError(f"{repo}: not found in --hub-mirror {mirror} (looked for {folder}); copy the repo there "
                          f"with `hf download {repo} --repo-type dataset --local-dir {folder}`")
    return [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]


def _hub_files(repo: str) -> tuple[str, list[str]]:
    if hub_offline():
        raise SourceError(f"{repo}: looks like a Hugging Face dataset id, but HF_HUB_OFFLINE is set; download "
                          f"the parquet files elsewhere and pass their folder instead, or pass --hub-mirror DIR "
                          f"holding {repo}/")
    from huggingface_hub import HfApi

    try:
        info = HfApi().dataset_info(repo)
    except Exception as exc:  # network, auth, missing repo: all end the same way for the user
        raise SourceError(f"{repo}: could not list the dataset on the Hugging Face Hub ({one_line(exc)}); check "
                          f"the id and your network, or pass a local folder of parquet files") from None
    return info.sha, [s.rfilename for s in info.siblings or []]


def _parts(ref: str) -> tuple[str, str, str]:
    match = _REF.match(ref)
    if match is None:
        raise SourceError(f"{ref}: not a Hub file reference (expected {PREFIX}OWNER/NAME@REVISION/PATH)")
    return match["repo"], match["revision"], match["path"]


def mirror_path(ref: str, mirror: str) -> Path:
    repo, _, path = _parts(ref)
    return Path(mirror) / repo / path


def fingerprint(ref: str, mirror: str | None) -> list:
    """What identifies the file's content: the Hub revision is in the reference; a mirror file's size and time."""
    if mirror:
        stat = mirror_path(ref, mirror).stat()
        return [stat.st_size, stat.st_mtime_ns]
    return [_parts(ref)[1]]


@contextmanager
def local_copy(ref: str, mirror: str | None):
    """The referenced file on local disk for the duration of the block (downloaded, then deleted)."""
    if mirror:
        yield mirror_path(ref, mirror)
        return
    from huggingface_hub import hf_hub_download

    repo, revision, path = _parts(ref)
    folder = tempfile.mkdtemp(prefix="prefcurate-hub-")
    try:
        try:
            local = hf_hub_download(repo, path, repo_type="dataset", revision=revision, local_dir=folder)
        except Exception as exc:
            raise SourceError(f"{ref}: download failed ({one_line(exc)}); run again with --resume to continue "
                              f"from the shards already ingested") from None
        yield Path(local)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def read_schema_names(ref: str, mirror: str | None) -> list[str]:
    """Column names of a referenced parquet file, from its footer only (for --format auto)."""
    import pyarrow.parquet as pq

    if mirror:
        return pq.read_schema(mirror_path(ref, mirror)).names
    from huggingface_hub import HfFileSystem

    repo, revision, path = _parts(ref)
    with HfFileSystem().open(f"datasets/{repo}@{revision}/{path}", "rb") as f:
        return pq.read_schema(f).names


def display_name(ref: str) -> str:
    return os.path.basename(_parts(ref)[2])
