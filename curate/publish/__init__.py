"""Publishing a curated dataset: Hugging Face folder export, dataset card, Hub upload."""
