"""The data sets `config.data.dataset` can name, importable without TensorFlow.

Config validation reads these, so a config error is reported before TensorFlow (which only
`diffusion_jax.input_pipeline` needs) is imported.
"""

TFDS_DATASETS = ("digits", "cifar10", "mnist", "celeb_a_hq/256", "lsun/bedroom",
                 "lsun/church_outdoor", "lsun/cat", "imagenet2012")
DATASETS = TFDS_DATASETS + ("folder",)
# Small enough to hold the decoded split in memory (the step-indexed path of the train iterator).
IN_MEMORY_DATASETS = ("digits", "cifar10", "mnist")
