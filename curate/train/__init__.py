"""Diffusion-DPO and Adaptive-DPO training for Stable Diffusion 1.x/2.x and SDXL (diffusers).

Import the pieces from their modules: config.TrainConfig, loop.train, data.InMemoryPairSource /
encode_pairs, models.load_components / tiny_sd15 / tiny_sdxl, sample.sample_grid.
This package imports torch; curate's data-only stages do not import it.
"""
