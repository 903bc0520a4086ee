"""Train the small domain CLIP on prefcurate's synthetic world: ``python -m curate.clip.domain``.

The synthetic world (curate.synth) draws target scenes (the prompts) and, per prompt, candidate
images from simulated generators that get some attributes wrong and degrade the rendering. A batch
holds every candidate of a few prompts, each captioned with the prompt of ITS OWN scene, so the
candidates of one prompt are each other's hard negatives: the model must tell "red circle left of
blue star" from "red circle right of blue star". Identical scenes in a batch share their positives.

The run writes ``open_clip_config.json`` + ``open_clip_model.safetensors`` (float16, a few MB),
which open_clip loads as ``local-dir:``, and ``training.json`` (config, loss curve, held-out
metrics). Reads top to bottom: config, data, model, loop, evaluation, save.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from curate.clip.models import DOMAIN_DIR

MODEL_CFG = {
    "embed_dim": 64,
    # 16 px patches (a 4 x 4 grid): objects span 14-26 px, and 4x fewer tokens than 8 px patches
    # is what makes training fit in minutes on a shared CPU.
    "vision_cfg": {"image_size": 64, "patch_size": 16, "width": 96, "layers": 3, "head_width": 32, "mlp_ratio": 2.0},
    # The text tower is narrow because its 49408-token embedding table dominates the file size.
    "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 48, "heads": 4, "layers": 3},
}
MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)  # open_clip's defaults


@dataclass(frozen=True)
class DomainConfig:
    seed: int = 0
    image_size: int = 64
    train_prompts: int = 5000
    per_prompt: int = 4  # candidates per prompt; they are the in-batch hard negatives
    prompts_per_step: int = 48
    steps: int = 1300
    lr: float = 2e-3
    warmup: int = 50
    weight_decay: float = 0.05
    eval_prompts: int = 500
    eval_candidates: int = 4
    threads: int = 1  # the cores are shared: one thread beats two oversubscribed ones


# ---------------------------------------------------------------------------------------- data
def render_pool_arrays(pool, size: int) -> tuple[np.ndarray, list[str]]:
    """Every pool image as uint8 (n, size, size, 3) and the prompt of its own scene."""
    from curate.synth import scene as sc

    pixels = np.empty((pool.n_images, size, size, 3), np.uint8)
    captions = []
    for i in range(pool.n_images):
        image = sc.render(pool.scene(i), pool.params(i), size, int(pool.seed[i]))
        pixels[i] = np.asarray(image if pool.fmt[i] == "png" else _jpeg_round_trip(image))
        captions.append(sc.prompt_for(pool.scene(i)))
    return pixels, captions


def _jpeg_round_trip(image):
    import io

    from PIL import Image

    from curate.synth import scene as sc

    return Image.open(io.BytesIO(sc.encode(image, "jpeg"))).convert("RGB")


def with_relation_flips(pool) -> None:
    """Make the last candidate of every two-object prompt its target with the relation inverted.

    Generators flip a relation only now and then, so without this the model learns objects and
    colours and barely looks at "left of" vs "right of"; one such hard negative per prompt fixes it.
    """
    from curate.synth import scene as sc

    inverse = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
    table = np.arange(len(sc.LAYOUTS))
    for relation, other in inverse.items():
        table[sc.LAYOUTS.index(relation)] = sc.LAYOUTS.index(other)
    two = np.flatnonzero(pool.targets[:, sc.N_OBJ] == 2)
    last = two * pool.per_prompt + pool.per_prompt - 1
    pool.codes[last] = pool.targets[two]
    pool.codes[last, sc.LAYOUT] = table[pool.targets[two, sc.LAYOUT]]


def to_tensor(pixels: np.ndarray):
    """uint8 NHWC -> normalised float NCHW, as open_clip's preprocess would give."""
    import torch

    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div_(255)
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


# ---------------------------------------------------------------------------------------- math
def lr_at(step: int, cfg: DomainConfig) -> float:
    """Linear warm-up, then cosine decay to 0 at ``cfg.steps``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * progress))


def multi_positive_clip_loss(image_features, text_features, logit_scale, caption_ids):
    """Symmetric CLIP cross-entropy where every pair with the same caption counts as a positive."""
    import torch

    logits = logit_scale * image_features @ text_features.T
    same = (caption_ids[:, None] == caption_ids[None, :]).float()
    target = same / same.sum(dim=1, keepdim=True)
    return 0.5 * (torch.sum(-target * logits.log_softmax(dim=1), dim=1).mean()
                  + torch.sum(-target * logits.T.log_softmax(dim=1), dim=1).mean())


# --------------------------------------------------------------------------------------- train
def train(cfg: DomainConfig, log=lambda message: print(message, flush=True)):
    import open_clip
    import torch

    from curate.synth.pool import make_pool

    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    started, cpu_started = time.perf_counter(), time.process_time()
    pool = make_pool(np.random.default_rng(cfg.seed), cfg.train_prompts, cfg.per_prompt)
    with_relation_flips(pool)
    pixels, captions = render_pool_arrays(pool, cfg.image_size)
    tokenizer = open_clip.get_tokenizer("ViT-B-32", context_length=MODEL_CFG["text_cfg"]["context_length"])
    tokens = tokenizer(captions)
    caption_ids = torch.from_numpy(np.unique(np.array(captions, dtype=object), return_inverse=True)[1].astype(np.int64))
    log(f"rendered {len(captions)} training images in {time.perf_counter() - started:.0f}s")

    model = open_clip.model.CLIP(**MODEL_CFG)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed + 1)
    curve = []
    for step in range(cfg.steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        prompts = rng.choice(cfg.train_prompts, cfg.prompts_per_step, replace=False)
        rows = torch.from_numpy((prompts[:, None] * cfg.per_prompt + np.arange(cfg.per_prompt)).reshape(-1))
        image_f = model.encode_image(to_tensor(pixels[rows.numpy()]), normalize=True)
        text_f = model.encode_text(tokens[rows], normalize=True)
        loss = multi_positive_clip_loss(image_f, text_f, model.logit_scale.exp().clamp(max=100), caption_ids[rows])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 50 == 0 or step == cfg.steps - 1:
            curve.append((step, round(loss.item(), 4)))
            log(f"step {step:4d}  loss {loss.item():.4f}  lr {lr_at(step, cfg):.2e}  {time.perf_counter() - started:.0f}s")
    return model.eval(), {"loss_curve": curve, "train_seconds": round(time.perf_counter() - started, 1),
                          "train_cpu_seconds": round(time.process_time() - cpu_started, 1)}


# -------------------------------------------------------------------------------------- save
def save(model, out: Path, cfg: DomainConfig, record: dict) -> Path:
    """Write the open_clip ``local-dir`` layout (config + float16 safetensors) and the training record."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(dtype=v.dtype if not v.is_floating_point() else __import__("torch").float16).contiguous()
             for k, v in model.state_dict().items()}
    save_file(state, str(out / "open_clip_model.safetensors"), metadata={"trained_by": "curate.clip.domain"})
    config = {"model_cfg": MODEL_CFG, "preprocess_cfg": {"mean": list(MEAN), "std": list(STD),
                                                         "interpolation": "bicubic", "resize_mode": "shortest"}}
    (out / "open_clip_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "training.json").write_text(json.dumps({"config": asdict(cfg), **record}, indent=2) + "\n")
    return out


# ---------------------------------------------------------------------------------- evaluation
def evaluate(model_dir: Path, cfg: DomainConfig, candidates_per_prompt: int = 8) -> dict:
    """Held-out metrics of the SAVED model, loaded as open_clip loads it, on freshly rendered bytes.

    - ``match_accuracy``: per prompt, the exact-match image among it and ``eval_candidates - 1``
      wrong candidates (each off by at least one attribute, degraded like the rest): how often the
      highest prompt-image score is the exact match. Chance is 1 / eval_candidates.
    - ``margin_agrees_with_majority``: over all candidate pairs of a prompt where the majority
      taste (0.6 fidelity + 0.4 quality) is not a tie, how often sign(score_a - score_b) agrees.
    - ``margin_agrees_with_fidelity``: the same against the fidelity order alone (what CLIP sees).
    """
    from curate.clip.decode import decode_image
    from curate.clip.models import load_clip, resolve
    from curate.synth import annotators as an
    from curate.synth import scene as sc
    from curate.synth.pool import make_pool

    loaded = load_clip(resolve(f"local-dir:{model_dir}"))
    pool = make_pool(np.random.default_rng(cfg.seed + 10_000), cfg.eval_prompts, candidates_per_prompt)
    images = [loaded.preprocess(decode_image(sc.render_bytes(pool.scene(i), pool.params(i), cfg.image_size,
                                                             pool.fmt[i], int(pool.seed[i]))))
              for i in range(pool.n_images)]
    import torch

    image_f = np.concatenate([loaded.encode_images(torch.stack(images[s:s + 256])) for s in range(0, len(images), 256)])
    text_f = loaded.encode_texts(list(pool.prompts))
    scores = (image_f.reshape(cfg.eval_prompts, candidates_per_prompt, -1) * text_f[:, None, :]).sum(-1)
    fidelity = pool.fidelity.reshape(cfg.eval_prompts, candidates_per_prompt)
    reward = an.taste_rewards(pool)["majority"].reshape(cfg.eval_prompts, candidates_per_prompt)
    return {"held_out_prompts": cfg.eval_prompts, **match_accuracy(scores, fidelity, cfg.eval_candidates),
            **pair_agreement(scores, reward, fidelity, an.MAJORITY_TIE_EPS)}


def match_accuracy(scores: np.ndarray, fidelity: np.ndarray, k: int) -> dict:
    """Share of prompts whose exact match (fidelity 1) outscores k - 1 wrong candidates (fidelity < 1)."""
    hits, used = 0, 0
    for s, f in zip(scores, fidelity):
        exact, wrong = np.flatnonzero(f == 1.0), np.flatnonzero(f < 1.0)
        if len(exact) and len(wrong) >= k - 1:
            used += 1
            hits += bool(s[exact[0]] > s[wrong[:k - 1]].max())
    return {"match_accuracy": round(hits / max(used, 1), 4), "match_prompts_used": used, "match_candidates": k}


def pair_agreement(scores: np.ndarray, reward: np.ndarray, fidelity: np.ndarray, tie_eps: float) -> dict:
    """How often the CLIP margin's sign agrees with the majority taste and with fidelity, over candidate pairs."""
    i, j = np.triu_indices(scores.shape[1], k=1)
    margin = scores[:, i] - scores[:, j]
    d_reward, d_fid = reward[:, i] - reward[:, j], fidelity[:, i] - fidelity[:, j]
    decided = np.abs(d_reward) > tie_eps
    differ = d_fid != 0
    return {"margin_agrees_with_majority": round(float((np.sign(margin) == np.sign(d_reward))[decided].mean()), 4),
            "majority_pairs": int(decided.sum()),
            "margin_agrees_with_fidelity": round(float((np.sign(margin) == np.sign(d_fid))[differ].mean()), 4),
            "fidelity_pairs": int(differ.sum())}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DOMAIN_DIR, help=f"where to write the model (default {DOMAIN_DIR})")
    for name, default in asdict(DomainConfig()).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default)
    args = parser.parse_args(argv)
    cfg = DomainConfig(**{k: v for k, v in vars(args).items() if k != "out"})
    model, record = train(cfg)
    out = save(model, args.out, cfg, record)
    metrics = evaluate(out, cfg)
    save(model, out, cfg, {**record, "held_out": metrics})
    print(json.dumps(metrics, indent=2))
    return metrics


if __name__ == "__main__":
    main()
