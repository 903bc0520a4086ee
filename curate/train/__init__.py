"""Diffusion-DPO and Adaptive-DPO training for Stable Diffusion 1.x/2.x and SDXL (diffusers).

Import the pieces from their modules: from_dataset.train_from_dataset (what `prefcurate train`
calls), config.TrainConfig, loop.train, dataset_source.DatasetPairSource and data.InMemoryPairSource
/ encode_pairs (both batched by sampler.PairSampler), models.load_components / tiny_sd15 /
tiny_sdxl, sample.sample_grid.
This package imports torch; curate's data-only stages do not import it.
"""
