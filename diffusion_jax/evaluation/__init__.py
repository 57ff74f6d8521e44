"""Sample-quality evaluation: Inception features, FID, Inception Score, precision/recall.

Importing this package is light: no TensorFlow, no torch, no weight loading. The Flax
InceptionV3 lives in `diffusion_jax.evaluation.inception`, the sampling/eval loop in
`diffusion_jax.evaluation.sample_quality`; import them explicitly.
"""
from diffusion_jax.evaluation.metrics import StreamingStats
from diffusion_jax.evaluation.metrics import frechet_distance
from diffusion_jax.evaluation.metrics import inception_score
from diffusion_jax.evaluation.metrics import precision_recall

__all__ = ["StreamingStats", "frechet_distance", "inception_score", "precision_recall"]
