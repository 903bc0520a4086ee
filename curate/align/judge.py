from curate.scorers.judge import detector_accuracy, judge_images, read_quality, read_scene  # noqa: F401  (moved)
