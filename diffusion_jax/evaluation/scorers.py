"""Which sample-quality scores a config asks for: the one place that decides it.

  "fid"     FID / Inception Score / precision-recall with the FID InceptionV3, when
            eval.inception_weights or eval.reference_stats is set (both are then needed).
  "digits"  the digits Frechet distance (fixed digits classifier), on data.dataset="digits".
"""

from __future__ import annotations

from typing import Any

from diffusion_jax.evaluation import sample_quality


def requested(config: Any) -> tuple[str, ...]:
  """The names of the scores `config` asks for (possibly none)."""
  names = []
  if config.eval.inception_weights or config.eval.reference_stats:
    names.append("fid")
  if config.data.dataset == "digits":
    names.append("digits")
  return tuple(names)


def build(name: str, config: Any) -> sample_quality.Scorer:
  """The scorer of a requested score (loads its network and reference statistics)."""
  if name == "fid":
    return sample_quality.inception_scorer(config.eval)
  if name == "digits":
    from diffusion_jax.evaluation import digits_fd  # pylint: disable=g-import-not-at-top
    return digits_fd.scorer("test")
  raise ValueError(f"unknown score {name!r}; scores: 'fid', 'digits'.")
