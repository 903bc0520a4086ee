"""The curation report: one self-contained HTML page of figures, charts and the most strongly flagged pairs."""
