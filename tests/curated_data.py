"""Curated synthetic datasets shared by the publish and report tests, built once per test process."""
from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
from typer.testing import CliRunner

from curate.cli import app

runner = CliRunner()
_BUILT: dict[str, Path] = {}


def cli(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def build_curated() -> Path:
    """A Pick-a-Pic world (train and validation files, a few malformed rows) through ingest,
    annotators and flag; built once per test process and shared by the publish and report tests."""
    if "curated" not in _BUILT:
        from curate.synth.world import WorldConfig, build_world

        root = Path(tempfile.mkdtemp(prefix="prefcurate-publish-"))
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        build_world(root / "world", WorldConfig(pairs=160, seed=5, minority_rate=0.2, malformed=3, formats=("pickapic",)))
        raw = pq.read_table(next((root / "world" / "pickapic").glob("*.parquet")))
        files = root / "files"
        files.mkdir()
        pq.write_table(raw.slice(0, 120), files / "train-00000-of-00001.parquet")
        pq.write_table(raw.slice(120), files / "validation-00000-of-00001.parquet")
        cli("ingest", str(files), "-f", "pickapic", "-o", str(root / "ds"))
        cli("annotators", str(root / "ds"))
        cli("flag", str(root / "ds"))
        _BUILT["curated"] = root / "ds"
    return _BUILT["curated"]


def build_with_clip() -> Path:
    """The curated dataset plus CLIP embeddings (a tiny random open_clip model, offline) and filters."""
    if "clip" not in _BUILT:
        import open_clip
        import torch
        from safetensors.torch import save_file

        root = build_curated().parent
        shutil.copytree(root / "ds", root / "ds_clip")
        model_dir = root / "tiny_clip"
        model_dir.mkdir()
        config = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8,
                                                  "head_width": 16},
                  "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}
        (model_dir / "open_clip_config.json").write_text(json.dumps({"model_cfg": config, "preprocess_cfg": {}}))
        torch.manual_seed(0)
        weights = open_clip.model.CLIP(**config).state_dict()
        save_file({k: v.contiguous() for k, v in weights.items()}, str(model_dir / "open_clip_model.safetensors"))
        cli("embed", str(root / "ds_clip"), "--model", f"local-dir:{model_dir}", "--batch-size", "64",
            "--decode-workers", "0")
        cli("filter", str(root / "ds_clip"))
        _BUILT["clip"] = root / "ds_clip"
    return _BUILT["clip"]
