"""The curation report page: one HTML file with inline CSS, inline SVG charts and data: URI thumbnails.

Sections follow the data's path: the funnel, the annotators, the minority flags, the CLIP scores,
the sources, and a gallery of the most strongly flagged pairs. A section whose stage has not run
says so and names the command. The page needs nothing from the network; a tiny inline script only
marks <body data-images="loaded"> once every image has decoded (what the browser test checks).
"""
from __future__ import annotations

import base64
import io
import time
from html import escape
from pathlib import Path

from curate import __version__
from curate.dataset import Dataset
from curate.funnel import Funnel, funnel as curation_funnel
from curate.report import data as figures
from curate.report.method import filter_method, flag_method
from curate.report.plots import COLORS, bar_chart, histogram_chart
from curate.report.style import CSS, SCRIPT
from curate.report.tastes import taste_section

FUNNEL_COLORS = {"total": "total", "rejected": "rejected", "filtered": "filtered", "flagged": "flagged", "kept": "good"}


def write_report(dataset_dir: str | Path, out: str | Path, gallery: int = 12, thumbnail: int = 192,
                 extra: tuple[tuple[str, str, str], ...] = ()) -> dict:
    """Write the page; returns its size, how many images it embeds and which sections are missing.

    ``extra`` sections (anchor, menu title, HTML) follow the curation ones: evaluation, training health.
    """
    ds = Dataset(dataset_dir)
    ds.require("pairs", f"run `{figures.MISSING['pairs'][1]}` first")  # the one table every section needs
    missing = [stage for table, (stage, _, _) in figures.MISSING.items() if not ds.has(table)]
    funnel = curation_funnel(ds)
    sections = [
        _funnel_section(funnel),
        _annotator_section(ds),
        _minority_section(ds, funnel),
        taste_section(ds),
        _clip_section(ds),
        _source_section(ds),
        _gallery_section(ds, gallery, thumbnail),
    ] + [html for _, _, html in extra]
    page = _page(ds, funnel, sections, [(anchor, title) for anchor, title, _ in extra])
    return {**write_page(page, out), "missing": missing}


def write_page(page: str, out: str | Path) -> dict:
    """Write ``page`` under a temporary name, then rename it; its size and how many images it embeds."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".tmp-{out.name}")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    return {"bytes": out.stat().st_size, "images": page.count("<img ")}


# --------------------------------------------------------------------------------------- helpers
def _missing(table: str) -> str:
    return f'<div class="missing"><strong>Not computed yet.</strong> {_markdown_inline(_capital(figures.missing_hint(table)))}.</div>'


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _section(anchor: str, title: str, lead: str, body: str) -> str:
    return (f'<section id="{anchor}"><h2>{escape(title)}</h2><p class="lead">{lead}</p>{body}</section>')


def _figure(svg: str, caption: str) -> str:
    return f'<figure class="chart-box">{svg}<figcaption>{caption}</figcaption></figure>'


def _pct(part: float, whole: float) -> str:
    return f"{part / whole:.1%}" if whole else "n/a"


def _tiles(items: list[tuple[str, str, str, str]]) -> str:
    """KPI tiles: (label, value, note, colour key)."""
    return '<div class="tiles">' + "".join(
        f'<div class="tile" style="border-top-color:{COLORS.get(color, color)}"><div class="tile-value">{escape(value)}'
        f'</div><div class="tile-label">{escape(label)}</div><div class="tile-note">{escape(note)}</div></div>'
        for label, value, note, color in items) + "</div>"


def _markdown_inline(text: str) -> str:
    """The method paragraphs use **bold** and `code` only."""
    out = escape(text)
    while out.count("**") >= 2:
        out = out.replace("**", "<strong>", 1).replace("**", "</strong>", 1)
    while out.count("`") >= 2:
        out = out.replace("`", "<code>", 1).replace("`", "</code>", 1)
    return out


# -------------------------------------------------------------------------------------- sections
def _funnel_section(funnel: Funnel) -> str:
    items = [(label, n, FUNNEL_COLORS[kind]) for label, n, kind in funnel.steps()]
    chart = bar_chart(items, "Curation funnel", total=funnel.read, width=1080, label_width=260)
    balanced = funnel.read == funnel.accepted + sum(funnel.rejected.values())
    lead = (f"Every pair read is accounted for: {funnel.read:,} read = {funnel.accepted:,} accepted + "
            f"{sum(funnel.rejected.values()):,} rejected{'' if balanced else ' (DOES NOT RECONCILE)'}. "
            f"Shares are of the pairs read. {funnel.ties:,} accepted pairs are ties.")
    notes = []
    if funnel.filtered is None:
        notes.append(f"Not filtered: {_markdown_inline(figures.missing_hint('filters'))}.")
    if funnel.flagged is None:
        notes.append(f"Not flagged: {_markdown_inline(figures.missing_hint('pair_scores'))}.")
    note = f'<p class="note">{" ".join(notes)}</p>' if notes else ""
    return _section("funnel", "Funnel", lead, _figure(chart, "Pairs at each step; coloured bars are removals.") + note)


def _annotator_section(ds: Dataset) -> str:
    people = figures.annotator_figures(ds)
    if people is None:
        return _section("annotators", "Annotators", "Who judged, and how far each agrees with the consensus.",
                        _missing("annotators"))
    v = people["verdicts"]
    alpha = people["krippendorff_alpha"]
    tiles = _tiles([
        ("annotators", f"{people['annotators']:,}", f"median {people['median_judgements']:g} judgements each", "total"),
        ("reliable", f"{v['reliable']:,}", "interval above the typical annotator", "good"),
        ("unreliable", f"{v['unreliable']:,}", "interval below the typical annotator", "rejected"),
        ("undecided", f"{v['undecided']:,}", "too few judgements to tell", "neutral"),
        ("position-biased", f"{people['position_biased']:,}", "exact binomial p < 0.001", "flagged"),
        ("Krippendorff's α", "n/a" if alpha is None else f"{alpha:.3f}", "agreement beyond chance", "kept"),
    ])
    reliability = people["reliability"]
    chart = histogram_chart(reliability.edges, reliability.series, "Annotator reliability", "shrunk reliability "
                            "(posterior mean agreement with the consensus)", "annotators")
    activity = people["activity"]
    chart2 = histogram_chart(activity.edges, activity.series, "Judgements per annotator",
                             "log10 judgements per annotator", "annotators", colors={"all": COLORS["total"]})
    body = tiles + '<div class="grid2">' + _figure(chart, "Stacked by verdict: reliable, undecided, unreliable.") \
        + _figure(chart2, "Activity: 0 = one judgement, 1 = ten, 2 = a hundred.") + "</div>"
    return _section("annotators", "Annotators", f"{people['judgements']:,} judgements by {people['annotators']:,} "
                    f"people; tie rate {people['tie_rate']:.1%}. Reliability is shrunk towards the typical "
                    "annotator, so a handful of judgements never makes anyone reliable or unreliable.", body)


def _minority_section(ds: Dataset, funnel: Funnel) -> str:
    scores = figures.minority_figures(ds)
    if scores is None:
        return _section("minority", "Minority flags", "Judgements the evidence says are likely wrong or idiosyncratic.",
                        _missing("pair_scores"))
    config = scores["config"]
    markers = () if config.get("quantile") is not None else ((config.get("threshold", 0.5), "flag threshold"),)
    hist = scores["minority_score"]
    chart = histogram_chart(hist.edges, hist.series, "Minority score", "minority score = 1 - P(label right)",
                            "judgements", markers=markers)
    reasons = sorted(scores["reasons"].items(), key=lambda kv: -kv[1])
    reason_chart = bar_chart([(r, n, "flagged") for r, n in reasons], "Reasons", total=scores["flagged"],
                             width=520, label_width=170) if reasons else '<p class="note">No reasons: nothing flagged.</p>'
    tiles = _tiles([
        ("flagged", f"{scores['flagged']:,}", f"{_pct(scores['flagged'], scores['pairs'])} of {scores['pairs']:,} pairs", "flagged"),
        ("scored", f"{scores['scored']:,}", "with a minority score (ties never are)", "kept"),
        ("with u", f"{scores['with_u']:,}", "two or more signals", "total"),
        ("mean weight", f"{scores['mean_weight']:.3f}", "Adaptive-DPO W, ties at 0", "good"),
    ])
    extra = ""
    if scores["u"] is not None:
        extra = _figure(histogram_chart(scores["u"].edges, scores["u"].series, "Adaptive-DPO u", "u = a s",
                                        "judgements", colors={"all": COLORS["flagged"]}), "The minority metric u.")
    weight = scores["weight"]
    extra += _figure(histogram_chart(weight.edges, weight.series, "Training weight", "W = 1 / (k x + c)", "judgements",
                                     colors={"all": COLORS["good"]}), "Per-pair training weights.")
    method = "".join(f"<p>{_markdown_inline(p)}</p>" for p in flag_method(config))
    body = (tiles + '<div class="grid2">' + _figure(chart, "Stacked: flagged (purple) and not flagged (blue).")
            + _figure(reason_chart, "A flagged pair can have several reasons; shares are of flagged pairs.")
            + extra + "</div>" + f'<details><summary>How the flags were made</summary>{method}</details>')
    return _section("minority", "Minority flags", "Each judgement's minority score combines the consensus of "
                    "everyone else with the annotator's reliability; the highest are flagged, with reasons.", body)


def _clip_section(ds: Dataset) -> str:
    models = figures.clip_figures(ds)
    if models is None:
        return _section("clip", "CLIP scores", "Prompt-image agreement of both images, by a CLIP model.",
                        _missing("clip_scores"))
    filter_run = figures.manifest(ds, "filter") if ds.has("filters") else None
    rules = (filter_run or {}).get("config", {}).get("rules", {})
    body = ""
    for model in models:
        charts = []
        if model["scores"] is not None:
            charts.append(_figure(histogram_chart(model["scores"].edges, model["scores"].series, "CLIP score",
                                                  "prompt-image cosine", "images", stacked=False),
                                  "Chosen images (green) against the images not chosen (grey), ties left out."))
        if model["margin"] is not None:
            charts.append(_figure(histogram_chart(model["margin"].edges, model["margin"].series, "CLIP margin",
                                                  "score(winner) - score(loser), ties left out", "pairs",
                                                  markers=((0.0, ""),)),
                                  f"Positive: CLIP agrees with the annotator ({_pct(model['margin_positive'], model['margin_decided'])} "
                                  "of decided pairs)."))
        if model["image_cosine"] is not None:
            limit = rules.get("max_image_cosine") if rules.get("model") == model["model"] else None
            marks = ((limit, "near-identical"),) if limit is not None else ()
            charts.append(_figure(histogram_chart(model["image_cosine"].edges, model["image_cosine"].series,
                                                  "Image-image cosine", "cosine of the two images", "pairs",
                                                  markers=marks, colors={"all": COLORS["total"]}),
                                  "Near 1: the two images are the same picture, no preference signal."))
        body += (f'<h3>Model <code>{escape(model["model"])}</code> <span class="muted">{model["pairs"]:,} pairs'
                 f"</span></h3>" + '<div class="grid2">' + "".join(charts) + "</div>")
    if filter_run is not None:
        body += ('<details><summary>How the filters were made</summary>'
                 + "".join(f"<p>{_markdown_inline(line)}</p>" for line in filter_method(filter_run.get("config", {})))
                 + "</details>")
    else:
        body += _missing("filters")
    return _section("clip", "CLIP scores", "How well each image follows its prompt by a CLIP model, whether CLIP "
                    "agrees with the people, and how alike the two images of a pair are.", body)


def _source_section(ds: Dataset) -> str:
    rows = figures.source_rows(ds)
    has_flags, has_filters = ds.has("pair_scores"), ds.has("filters")
    head = ["source", "pairs", "rejected", "ties", "prompts", "annotators"]
    head += ["flagged", "mean weight"] if has_flags else []
    head += ["filtered out"] if has_filters else []
    lines = []
    for r in rows:
        n = r.get("pairs", 0)
        cells = [f"<td class='name'>{escape(r['source'])}</td>", f"<td>{n:,}</td>", f"<td>{r['rejected']:,}</td>",
                 f"<td>{r.get('ties', 0):,}</td>", f"<td>{r.get('prompts', 0):,}</td>", f"<td>{r.get('annotators', 0):,}</td>"]
        if has_flags:
            weight = r.get("mean_weight")
            cells += [f"<td>{r.get('flagged') or 0:,} <span class='muted'>{_pct(r.get('flagged') or 0, n)}</span></td>",
                      f"<td>{'' if weight is None else f'{weight:.3f}'}</td>"]
        if has_filters:
            cells.append(f"<td>{r.get('filtered') or 0:,} <span class='muted'>{_pct(r.get('filtered') or 0, n)}</span></td>")
        lines.append("<tr>" + "".join(cells) + "</tr>")
    table = ("<table><thead><tr>" + "".join(f"<th>{escape(h)}</th>" for h in head) + "</tr></thead><tbody>"
             + "".join(lines) + "</tbody></table>")
    rejected = ""
    if ds.has("rejects"):
        import polars as pl

        counts = (ds.scan("rejects").group_by("source", "reason").agg(pl.len().alias("n"))
                  .sort(["source", "n"], descending=[False, True]).collect())
        if counts.height:
            rejected = ("<h3>Rejected rows by reason</h3><table><thead><tr><th>source</th><th class='text'>reason</th><th>rows</th>"
                        "</tr></thead><tbody>" + "".join(
                            f"<tr><td class='name'>{escape(s)}</td><td class='text'>{escape(reason)}</td><td>{n:,}</td></tr>"
                            for s, reason, n in counts.iter_rows()) + "</tbody></table>")
    return _section("sources", "Sources", "Per input file: what was read, rejected, flagged and filtered.",
                    table + rejected)


def _gallery_section(ds: Dataset, limit: int, thumbnail: int) -> str:
    from curate.annotators.flag import REASONS

    rows = figures.gallery_rows(ds, limit) if limit else []
    if rows is None:
        return _section("gallery", "Most strongly flagged pairs", "The judgements the evidence doubts most.",
                        _missing("pair_scores"))
    if not rows:
        return _section("gallery", "Most strongly flagged pairs", "The judgements the evidence doubts most.",
                        '<p class="note">No pair is flagged.</p>')
    cards = []
    for row in rows:
        sides = []
        for side in ("a", "b"):
            won = row["label"] == side
            badge = ("<span class='badge win'>✓ chosen</span>" if won else
                     "<span class='badge tie'>tie</span>" if row["label"] == "tie" else "")
            sides.append(f"<div class='side{' won' if won else ''}'>{_thumbnail(row[f'image_{side}'], thumbnail)}"
                         f"<span class='which'>{side.upper()}</span>{badge}</div>")
        chips = "".join(f"<span class='chip' title='{escape(REASONS.get(r, r))}'>{escape(r.replace('_', ' '))}</span>"
                        for r in row["reasons"])
        chips += "".join(f"<span class='chip filter' title='removed by the CLIP filter'>{escape(r.replace('_', ' '))}"
                         f"</span>" for r in (row.get("filter_reasons") or []))
        facts = [f"minority score <b>{row['minority_score']:.2f}</b>"]
        facts += [f"consensus for label <b>{row['agreement']:.2f}</b>"] if row.get("agreement") is not None else []
        facts += [f"annotator reliability <b>{row['reliability']:.2f}</b>"] if row.get("reliability") is not None else []
        facts += [f"u <b>{row['u']:.2f}</b>"] if row.get("u") is not None else []
        facts.append(f"weight <b>{row['weight']:.2f}</b>")
        cards.append(f"<article class='pair'><div class='sides'>{''.join(sides)}</div>"
                     f"<p class='prompt'>{escape(row['prompt'] or '')}</p><p class='facts'>{' · '.join(facts)}</p>"
                     f"<div class='chips'>{chips}</div><p class='pid'>{escape(row['pair_id'])} · "
                     f"{escape(row['source'] or '')}</p></article>")
    return _section("gallery", "Most strongly flagged pairs", f"The {len(rows)} flagged judgements with the highest "
                    "minority score; the annotator's choice is marked. Hover a reason for what it means.",
                    "<div class='gallery'>" + "".join(cards) + "</div>")


def _thumbnail(blob: bytes | None, size: int) -> str:
    """A JPEG data: URI scaled to fit ``size`` (small images scaled up so a person can see them)."""
    from PIL import Image, UnidentifiedImageError

    if not blob:
        return "<div class='noimg'>no image bytes</div>"
    try:
        with Image.open(io.BytesIO(blob)) as image:
            image = image.convert("RGB")
            scale = size / max(image.size)
            image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                                 Image.Resampling.LANCZOS)
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=85)
    except (UnidentifiedImageError, OSError) as exc:
        return f"<div class='noimg'>undecodable image ({escape(type(exc).__name__)})</div>"
    data = base64.b64encode(buffer.getvalue()).decode()
    return f"<img src='data:image/jpeg;base64,{data}' width='{image.width}' height='{image.height}' alt=''>"


# ------------------------------------------------------------------------------------------ page
def _page(ds: Dataset, funnel: Funnel, sections: list[str], extra_nav: list[tuple[str, str]]) -> str:
    stages = [s for s in ("ingest", "annotators", "flag", "filter") if figures.manifest(ds, s)]
    stages += ["embed"] if ds.has("clip_scores") else []
    chips = "".join(f"<span class='stage'>{escape(s)}</span>" for s in stages)
    filtered = sum((funnel.filtered or {}).values())
    tiles = _tiles([
        ("pairs read", f"{funnel.read:,}", f"{funnel.accepted:,} accepted", "total"),
        ("rejected", f"{sum(funnel.rejected.values()):,}", f"{_pct(sum(funnel.rejected.values()), funnel.read)} of read", "rejected"),
        ("filtered out", "—" if funnel.filtered is None else f"{filtered:,}",
         "filter not run" if funnel.filtered is None else f"{_pct(filtered, funnel.accepted)} of accepted", "filtered"),
        ("flagged", "—" if funnel.flagged is None else f"{funnel.flagged:,}",
         "flag not run" if funnel.flagged is None else f"{_pct(funnel.flagged, funnel.kept)} of the kept pairs"
         + (f" ({funnel.flagged_total:,} before the filter)" if funnel.filtered is not None else ""), "flagged"),
        ("clean", f"{funnel.clean:,}", f"{_pct(funnel.clean, funnel.read)} of read"
         + ("; nothing flagged or filtered yet" if funnel.flagged is None and funnel.filtered is None else ""), "good"),
    ])
    nav = "".join(f"<a href='#{a}'>{t}</a>" for a, t in (("funnel", "Funnel"), ("annotators", "Annotators"),
                                                         ("minority", "Flags"), ("clip", "CLIP"), ("sources", "Sources"),
                                                         ("gallery", "Gallery"), *extra_nav))
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><meta name='viewport' "
            f"content='width=device-width, initial-scale=1'><title>Curation report: {escape(ds.root.name)}</title>"
            f"<style>{CSS}</style></head><body><header><div class='wrap'><div class='title'><h1>Curation report"
            f"</h1><p class='sub'><code>{escape(str(ds.root))}</code> · prefcurate {__version__} · {when}</p>"
            f"<p class='stages'>stages run: {chips}</p></div><nav>{nav}</nav></div></header><main class='wrap'>"
            f"{tiles}{''.join(sections)}</main><footer class='wrap'>Made by <code>prefcurate report</code>. "
            f"Self-contained: no network access needed.</footer>{SCRIPT}</body></html>")

