"""How the flags and filters were made, in words, with the values of the run that made them.

Read from the stage manifests (the configs stored with every run), so the card and the report
describe the run that produced the tables, not today's defaults.
"""
from __future__ import annotations


def flag_method(config: dict) -> list[str]:
    """Paragraphs explaining the minority flags and weights of a ``prefcurate flag`` run."""
    if config.get("quantile") is not None:
        rule = f"the {config['quantile']:.0%} of judgements with the highest minority score are flagged"
    else:
        rule = f"a judgement is flagged when its minority score is at least {config.get('threshold', 0.5):g}"
    x = "u" if config.get("weight_from", "u") == "u" else "the minority score"
    power = " squared" if config.get("weight_kind") == "quadratic" else ""
    return [
        "**Consensus.** For every judgement, everything except the judgement itself is summed in log-odds "
        "into q, the probability that the labelled winner is really the better image: a Bradley-Terry fit "
        "over all judgements with this judgement's own pull removed (or, without it, the other people's votes "
        "on the same prompt and images), plus the AI scorers weighted by how well they predict people.",
        "**Annotator reliability.** r is each annotator's rate of agreeing with the consensus, shrunk towards "
        "the typical annotator by a Beta prior fitted over all annotators, so a person with three judgements "
        "is not called reliable or unreliable on that alone.",
        "**Minority score.** 1 - P(label right), where P(label right) = r q / (r q + (1 - r)(1 - q)) treats "
        "the consensus and the annotator's reliability as two independent pieces of evidence; a missing "
        "piece counts as no evidence (1/2). Ties are never scored or flagged.",
        f"**Flag.** {rule[0].upper() + rule[1:]}. Each flag lists its reasons (the consensus disagrees, the "
        "scorers or other voters disagree, the annotator is unreliable or position-biased, high u).",
        f"**Adaptive-DPO metric u.** Each signal's margin for the labelled winner (RMS-normalised over the "
        f"dataset) is scaled by rho = {config.get('rho', 3.75):g}; a is 1 minus the mean sigmoid of the scaled "
        "margins (how much the signals doubt the label), s is their standard deviation capped at 1 (how much "
        "they disagree with each other), and u = a s. It needs at least two signals.",
        f"**Weight.** W = 1 / (k x{power} + c) with x = {x}, k = {config.get('k', 10.0):g}, "
        f"c = {config.get('c', 1.0):g}: confident, consistent labels train at full weight, doubted ones less; "
        "ties get weight 0.",
    ]


FILTER_RULES = {
    "unscored": "an image or the prompt has no CLIP embedding (no bytes, or undecodable)",
    "low_prompt_score": "the prompt-image CLIP score is below the minimum",
    "near_identical_images": "the two images are near-identical (image-image cosine above the maximum): no "
                             "preference signal",
    "semantic_duplicate": "the same prompt with the same two images (within a cosine epsilon) as a kept pair",
}


def filter_method(config: dict) -> list[str]:
    """Sentences explaining the rules of a ``prefcurate filter`` run."""
    rules = config.get("rules", {})
    out = [f"Filter rules on CLIP model `{rules.get('model', '?')}`; a pair is counted under the first rule that "
           "removes it, and nothing is deleted from the dataset (the filters table keeps every verdict)."]
    if rules.get("drop_unscored", True):
        out.append(f"- unscored: {FILTER_RULES['unscored']}.")
    threshold = config.get("min_score_resolved")
    if threshold is not None:
        out.append(f"- low_prompt_score: the pair's {rules.get('score_of', 'max')} prompt-image cosine is below "
                   f"{threshold:.4g}.")
    if rules.get("max_image_cosine") is not None:
        out.append(f"- near_identical_images: image-image cosine above {rules['max_image_cosine']:g}.")
    if rules.get("duplicate_epsilon") is not None:
        out.append(f"- semantic_duplicate: same prompt and same two images within cosine "
                   f"1 - {rules['duplicate_epsilon']:g} of a kept pair.")
    return out
