"""PickScore v1's layout: a transformers ``CLIPModel`` and a CLIP processor; score = logit_scale * cosine.

PickScore publishes the model (``yuvalkirstain/PickScore_v1``) and uses the processor of the CLIP
it was fine-tuned from (``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``). A local folder holding the
model (config.json and weights) is read with its own processor files when it has them.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from curate.scorers.base import Scorer, ScorerError, ScorerSpec, WeightFile, first_cached, hub_offline, missing_weights
from curate.scorers.base import torch_dtype

MODEL = "yuvalkirstain/PickScore_v1"
PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
MODEL_WEIGHTS = ["model.safetensors", "pytorch_model.bin"]
PROCESSOR_FILES = ["preprocessor_config.json", "tokenizer_config.json", "tokenizer.json", "special_tokens_map.json"]


class PickScorer(Scorer):
    def __init__(self, name: str, model, processor, device: str, key: str):
        self.name, self.model, self.processor, self.device, self.key = name, model, processor, device, key

    def score_batch(self, images: list, prompts: list[str]) -> np.ndarray:
        import torch

        inputs = self.processor(text=prompts, images=[im.convert("RGB") for im in images], padding=True,
                                truncation=True, max_length=77, return_tensors="pt").to(self.device)
        m = self.model
        with torch.inference_mode():
            # the projections of the pooled outputs: CLIPModel's features in every transformers version
            image = m.visual_projection(m.vision_model(pixel_values=inputs["pixel_values"].to(m.dtype)).pooler_output)
            text = m.text_projection(m.text_model(input_ids=inputs["input_ids"],
                                                  attention_mask=inputs["attention_mask"]).pooler_output)
            image = image / image.norm(dim=-1, keepdim=True)
            text = text / text.norm(dim=-1, keepdim=True)
            return (m.logit_scale.exp() * (image * text).sum(-1)).float().cpu().numpy()


def locate(source: str | None) -> tuple[str, str]:
    """(model, processor) as from_pretrained takes them; offline, fail now naming every absent file."""
    if source and Path(source).expanduser().is_dir():
        folder = Path(source).expanduser()
        if not (folder / "config.json").is_file() or not any((folder / w).is_file() for w in MODEL_WEIGHTS):
            raise ScorerError(f"pickscore:{source}: the folder needs config.json and {' or '.join(MODEL_WEIGHTS)} "
                              f"(the files of {MODEL})")
        own = any((folder / f).is_file() for f in ("preprocessor_config.json", "processor_config.json"))
        processor = str(folder) if own else PROCESSOR
        return str(folder), processor
    model = source or MODEL
    if hub_offline():
        absent = [WeightFile(model, "config.json")] if first_cached(model, ["config.json"]) is None else []
        absent += [WeightFile(model, MODEL_WEIGHTS[0])] if first_cached(model, MODEL_WEIGHTS) is None else []
        absent += [WeightFile(PROCESSOR, f) for f in PROCESSOR_FILES if first_cached(PROCESSOR, [f]) is None]
        if absent:
            raise missing_weights("pickscore", absent, "put the model's files (and the processor's) in one folder "
                                  "and name the scorer pickscore:FOLDER")
    return model, PROCESSOR


def load_pickscore(spec: ScorerSpec, device: str, precision: str) -> PickScorer:
    from transformers import AutoProcessor, CLIPModel

    model_id, processor_id = locate(spec.source)
    try:
        model = CLIPModel.from_pretrained(model_id, dtype=torch_dtype(precision)).to(device).eval()
        processor = AutoProcessor.from_pretrained(processor_id)
    except OSError as err:
        raise ScorerError(f"pickscore: cannot load {model_id} / {processor_id}: {err}".splitlines()[0]) from err
    return PickScorer(spec.name, model, processor, device, key=f"{model_id}+{processor_id}")
