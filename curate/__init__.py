"""prefcurate: curate pairwise preference data for text-to-image models and train with Adaptive-DPO."""
__version__ = "0.1.0"
