"""The alignment benchmark: fine-tune the base model on preference data at several minority rates
with each method, then measure what the tuning bought on held-out prompts.

Methods (same pairs, steps, batch, learning rate and seeds for all):
- dpo: Diffusion-DPO on every pair;
- rdpo: Robust-DPO with eps = the nominal minority rate (it assumes the flip rate is known);
- adaptive-dpo: Adaptive-DPO with the online EMA annotators;
- adaptive-offline: Adaptive-DPO's W and G from u of `prefcurate flag` (no EMA forwards);
- dpo-curated: DPO on the pairs `prefcurate flag --quantile <nominal rate>` did not flag.
"""
from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from curate.align.model import AlignModel, to_latents, uint8_to_pixels
from curate.align.prefs import SampleSet, clean_labels, label_pairs, make_samples

METHODS = ("dpo", "rdpo", "adaptive-dpo", "adaptive-offline", "dpo-curated")


@dataclass(frozen=True)
class BenchConfig:
    train_prompts: int = 640        # one pair (two base samples) per prompt
    eval_prompts: int = 64          # two samples each: eval images and clean held-out pairs
    rates: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3)
    methods: tuple[str, ...] = METHODS
    all_methods_at_zero: bool = False   # at 0% only dpo runs unless set (rdpo == dpo there)
    seeds: tuple[int, ...] = (0, 1)
    steps: int = 40
    batch_size: int = 16
    lr: float = 1e-4
    beta: float = 1000.0
    adaptive_warmup: int = 8
    sample_steps: int = 10
    guidance: float = 3.0
    implicit_draws: int = 4
    use_clip: bool = True

    def runs(self) -> list[tuple[float, str, int]]:
        return [(rate, method, seed) for rate in self.rates for method in self.methods for seed in self.seeds
                if rate > 0 or method == "dpo" or self.all_methods_at_zero]


REDUCED = BenchConfig()
FULL = BenchConfig(train_prompts=4000, eval_prompts=256, seeds=(0, 1, 2), steps=300, sample_steps=25,
                   all_methods_at_zero=True, implicit_draws=8)


@dataclass
class Prepared:
    """Everything the runs share: base samples and their judgements, latents and prompt states."""

    base: AlignModel
    train: SampleSet
    evals: SampleSet
    latents: dict = field(default_factory=dict)
    prompt_states: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)


def prepare(base: AlignModel, cfg: BenchConfig, log=print, cache: Path | None = None) -> Prepared:
    """Base samples for training pairs and for evaluation (read from ``cache`` when it holds them)."""
    started = time.perf_counter()
    train = cached_samples(base, cfg.train_prompts, 100, cfg, cache)
    took_train = time.perf_counter() - started
    evals = cached_samples(base, cfg.eval_prompts, 200, cfg, cache)
    out = Prepared(base, train, evals)
    for tag, samples in (("t", train), ("e", evals)):
        lat = to_latents(uint8_to_pixels(samples.images), base.cfg.patch)
        out.latents.update({f"{tag}{i}": z for i, z in enumerate(lat)})
        states = base.encode(samples.prompts)
        out.prompt_states.update({f"{tag}p{p}": s for p, s in enumerate(states)})
    out.timings = {"sample_train_s": round(took_train, 1), "prepare_s": round(time.perf_counter() - started, 1)}
    log(f"base samples: train {len(train.images)} images, reward {train.tastes()['majority'].mean():.3f}; "
        f"eval {len(evals.images)} images, reward {evals.tastes()['majority'].mean():.3f} ({out.timings['prepare_s']} s)")
    return out


def cached_samples(base: AlignModel, n_prompts: int, seed: int, cfg: BenchConfig, cache: Path | None) -> SampleSet:
    """make_samples, kept in an .npz named after the model weights and the sampling settings."""
    import hashlib
    import pickle

    if cache is None:
        return make_samples(base, n_prompts, seed=seed, steps=cfg.sample_steps, guidance=cfg.guidance)
    weights = hashlib.sha256(b"".join(v.detach().numpy().tobytes() for v in base.unet.state_dict().values()))
    path = cache / f"samples-{weights.hexdigest()[:12]}-{n_prompts}-{seed}-{cfg.sample_steps}-{cfg.guidance}.pkl"
    if path.exists():
        return pickle.loads(path.read_bytes())
    samples = make_samples(base, n_prompts, seed=seed, steps=cfg.sample_steps, guidance=cfg.guidance)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(pickle.dumps(samples))
    tmp.replace(path)
    return samples


def pair_dicts(tag: str, n: int, label: np.ndarray, u: np.ndarray | None = None, keep: np.ndarray | None = None) -> list[dict]:
    labels = np.array(["a", "b", "tie"])[label]
    return [{"pair_id": f"{tag}{p}", "prompt_id": f"{tag}p{p}", "image_a_id": f"{tag}{2 * p}",
             "image_b_id": f"{tag}{2 * p + 1}", "label": str(labels[p]), **({"u": float(u[p])} if u is not None else {})}
            for p in range(n) if keep is None or keep[p]]


def train_config(cfg: BenchConfig, method: str, rate: float, seed: int, out: Path):
    from curate.train.config import TrainConfig

    kind = {"dpo": "dpo", "dpo-curated": "dpo", "rdpo": "dpo", "adaptive-dpo": "adaptive-dpo",
            "adaptive-offline": "adaptive-offline"}[method]
    return TrainConfig(model="align-base", finetune="full", method=kind, loss="rdpo" if method == "rdpo" else "dpo",
                       label_smoothing=rate if method == "rdpo" else 0.0, beta=cfg.beta, learning_rate=cfg.lr,
                       lr_scheduler="constant", max_steps=cfg.steps, batch_size=cfg.batch_size, seed=seed,
                       adaptive_warmup_steps=cfg.adaptive_warmup, output_dir=str(out), checkpoint_every=0,
                       keep_checkpoints=1, tensorboard=False, progress=False, log_every=max(cfg.steps // 4, 1))


def evaluate(prep: Prepared, unet, reference, cfg: BenchConfig) -> dict:
    """Mean true reward of samples on held-out prompts, win rate against the base model's samples
    from the same noise, and implicit accuracy on the held-out pairs labelled by the majority."""
    from curate.align.judge import judge_images
    from curate.align.sample import sample_images
    from curate.train.data import InMemoryPairSource
    from curate.train.evaluate import evaluate_pairs

    ev = prep.evals
    text = torch.stack([prep.prompt_states[f"ep{p}"] for p in range(len(ev.prompts))]).repeat_interleave(2, dim=0)
    images = sample_images(unet, prep.base.scheduler, text, prep.base.encode([""])[0], ev.seeds,
                           patch=prep.base.cfg.patch, steps=cfg.sample_steps, guidance=cfg.guidance)
    got = judge_images(images, np.repeat(ev.targets, 2, axis=0))
    base_reward = ev.tastes()["majority"]
    reward = got["reward"]
    pairs = pair_dicts("e", len(ev.prompts), clean_labels(ev))
    decided = sum(p["label"] != "tie" for p in pairs)
    source = InMemoryPairSource(pairs, prep.latents, prep.prompt_states, batch_size=min(8, decided), shuffle=False)
    acc = evaluate_pairs(unet, reference, prep.base.scheduler, source, batches=source.batches_per_epoch,
                         draws=cfg.implicit_draws, device=next(unet.parameters()).device)
    return {"reward": float(reward.mean()), "fidelity": float(got["fidelity"].mean()), "quality": float(got["quality"].mean()),
            "win_rate": float(np.mean((reward > base_reward) + 0.5 * (reward == base_reward))),
            "implicit_acc": acc["implicit_acc"], "heldout_pairs": acc["pairs"]}


def run_one(prep: Prepared, cfg: BenchConfig, rate: float, method: str, seed: int, labels, curation, work: Path) -> dict:
    from curate.train.data import InMemoryPairSource
    from curate.train.loop import train

    n = len(prep.train.prompts)
    keep = ~curation["flagged"] if method == "dpo-curated" else None
    u = curation["u"] if method == "adaptive-offline" else None
    pairs = pair_dicts("t", n, labels.label, u=u, keep=keep)
    source = InMemoryPairSource(pairs, prep.latents, prep.prompt_states, cfg.batch_size, seed=seed)
    out = work / f"run-{rate}-{method}-{seed}"
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    components = SimpleNamespace(unet=copy.deepcopy(prep.base.unet).train(), noise_scheduler=prep.base.scheduler)
    result = train(train_config(cfg, method, rate, seed, out), source, components, export=False)
    took = time.perf_counter() - started
    metrics = evaluate(prep, result.unet, result.reference, cfg)
    shutil.rmtree(out, ignore_errors=True)
    last = result.history[-1] if result.history else {}
    return {"rate": rate, "method": method, "seed": seed, **metrics, "train_pairs": len(source.pairs),
            "dropped": dict(source.dropped), "train_s": round(took, 1), "eval_s": round(time.perf_counter() - started - took, 1),
            "final_loss": last.get("loss"), "final_u_mean": last.get("u_mean")}


def run_benchmark(base: AlignModel, cfg: BenchConfig, results: Path, work: Path, log=print) -> list[dict]:
    """All runs; every finished run is appended to ``results`` (JSON lines) and skipped on a rerun."""
    done = {}
    if results.exists():
        for line in results.read_text().splitlines():
            row = json.loads(line)
            if row.get("config_key") == _key(cfg):
                done[(row.get("kind"), row.get("rate"), row.get("method"), row.get("seed"))] = row
    prep = prepare(base, cfg, log, cache=work / "samples")
    rows = list(done.values())
    judged = prep.evals.judged  # the base model's own eval samples: win rate and implicit accuracy are 1/2 by definition
    base_row = {"kind": "base", "config_key": _key(cfg), "reward": float(judged["reward"].mean()),
                "fidelity": float(judged["fidelity"].mean()), "quality": float(judged["quality"].mean()),
                "win_rate": 0.5, "implicit_acc": 0.5, **prep.timings}
    _append(results, base_row, done, rows)
    data_cache: dict = {}
    for rate, method, seed in cfg.runs():
        if ("run", rate, method, seed) in done:
            continue
        labels, curation = data_for(prep, cfg, rate, seed, work, data_cache, results, done, rows, log)
        row = {"kind": "run", "config_key": _key(cfg), **run_one(prep, cfg, rate, method, seed, labels, curation, work)}
        log(f"rate {rate:.0%} {method:16s} seed {seed}: reward {row['reward']:.4f} (base {base_row['reward']:.4f}) "
            f"win {row['win_rate']:.3f} acc {row['implicit_acc']:.3f} [{row['train_s']} + {row['eval_s']} s]")
        _append(results, row, done, rows)
    return rows


def data_for(prep, cfg, rate, seed, work, cache, results, done, rows, log):
    """Labels at this minority rate and seed, and the curation stages' verdicts on them (cached)."""
    if (rate, seed) in cache:
        return cache[(rate, seed)]
    labels = label_pairs(prep.train, rate, seed)
    needs_curation = rate > 0 and {"adaptive-offline", "dpo-curated"} & set(cfg.methods)
    started = time.perf_counter()
    if needs_curation:
        from curate.align.curation import curate_pairs

        curation = curate_pairs(work / f"data-{rate}-{seed}", prep.train.images, prep.train.prompts, labels.label,
                                labels.annotator, use_clip=cfg.use_clip, quantile=rate)
    else:
        curation = {"u": np.zeros(len(labels.label)), "flagged": np.zeros(len(labels.label), bool)}
    decided = labels.label != 2
    flagged = curation["flagged"] & decided
    minority = labels.is_minority
    row = {"kind": "data", "config_key": _key(cfg), "rate": rate, "seed": seed, "method": None,
           "realised_minority": float(minority[decided].mean()), "ties": int((~decided).sum()),
           "minority_label_share": labels.minority_label_share,
           "kinds": {k: int((labels.kind == k).sum()) for k in np.unique(labels.kind)},
           "flagged_share": float(flagged[decided].mean()),
           "flag_precision": float(minority[flagged].mean()) if flagged.any() else None,
           "flag_recall": float(flagged[minority].mean()) if minority.any() else None,
           "u_minority": float(curation["u"][minority].mean()) if minority.any() else None,
           "u_majority": float(curation["u"][decided & ~minority].mean()),
           "curation_s": round(time.perf_counter() - started, 1)}
    if ("data", rate, None, seed) not in done:
        _append(results, row, done, rows)
    log(f"data rate {rate:.0%} seed {seed}: realised minority {row['realised_minority']:.3f}, flagged "
        f"{row['flagged_share']:.3f} (precision {row['flag_precision']}, recall {row['flag_recall']})")
    cache[(rate, seed)] = (labels, curation)
    return cache[(rate, seed)]


def _key(cfg: BenchConfig) -> str:
    return json.dumps(asdict(cfg), sort_keys=True)


def _append(results: Path, row: dict, done: dict, rows: list) -> None:
    key = (row.get("kind"), row.get("rate"), row.get("method"), row.get("seed"))
    if key in done:
        return
    done[key] = row
    rows.append(row)
    results.parent.mkdir(parents=True, exist_ok=True)
    with open(results, "a") as f:
        f.write(json.dumps(row) + "\n")


def with_overrides(cfg: BenchConfig, **kw) -> BenchConfig:
    return replace(cfg, **{k: v for k, v in kw.items() if v is not None})
