"""The report's taste-group block: who holds which taste, from the annotators stage's taste_groups table."""
from __future__ import annotations

from html import escape

from curate.dataset import Dataset


def taste_groups(ds: Dataset) -> list[dict] | None:
    """The taste_groups rows (group order), or None when the annotators stage has not written them."""
    if not ds.has("taste_groups"):
        return None
    return ds.scan("taste_groups").collect().sort("group").to_dicts()


def taste_section(ds: Dataset) -> str:
    """A table of the taste groups: people, share of judgements, direction."""
    groups = taste_groups(ds)
    if not groups:
        return ""
    rows = "".join(f"<tr><td>{escape(g['name'])}</td><td>{g['people']:.1f}</td><td>{g['members']:,}</td>"
                   f"<td>{g['judgement_share']:.1%}</td><td>{escape(g['direction'])}</td></tr>" for g in groups)
    return ('<section id="tastes"><h2>Taste groups</h2><p class="lead">People whose choices agree with each other, '
            "from a mixture of Bradley-Terry tastes fitted over people by EM. The majority is the taste most people "
            "hold, not the one behind the most clicks.</p><table><thead><tr><th>group</th><th>people</th>"
            "<th>most likely members</th><th>share of judgements</th><th>direction</th></tr></thead>"
            f"<tbody>{rows}</tbody></table></section>")
