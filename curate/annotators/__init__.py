"""Annotator statistics, consensus and minority flags (adaptive-dpo.md sections 3 and 5)."""
