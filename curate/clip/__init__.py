"""CLIP embeddings, scores and filters (open_clip), and the small domain CLIP shipped with prefcurate.

models: resolve and load a model; embed: the embed stage; decode: image bytes to tensors in workers;
scores: per-pair CLIP scores and the ``scores`` table; filters: the filter rules and stage;
pipeline: ``embed_dataset`` (embed, then score); domain: training the domain CLIP.
"""
