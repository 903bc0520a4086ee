"""Ingest raw preference files (Pick-a-Pic parquet, HPDv2 JSON, generic tables) into pairs/images/rejects."""
