"""The digits dataset: sklearn's 8x8 digits (pure-numpy arrays + the TFDS builder)."""
