"""TFDS builders shipped with diffusion_jax; importing this package registers them.

* "digits": scikit-learn's 8x8 digits, built offline (the embedded default data set).

Importing this package imports `tensorflow_datasets`; `import diffusion_jax` does not.
"""
from diffusion_jax.datasets.digits.digits_dataset_builder import Digits

__all__ = ["Digits"]
