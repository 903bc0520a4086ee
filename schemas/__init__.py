"""Versioned Arrow schemas of prefcurate's tables (JSON files); shipped in the wheel as curate.schemas."""
