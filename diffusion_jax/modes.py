"""The `--mode`s of main.py: each mode registers a function `run(config, workdir)` here.

  train     train, or resume training (diffusion_jax.train)
  sample    write samples of a checkpoint (diffusion_jax.inference)
  eval      test-set bits/dim and sample quality of a checkpoint (diffusion_jax.inference)
  train_classifier   the noisy classifier of classifier guidance (diffusion_jax.classifier_training)
  analyze   the DDPM paper's analyses of a checkpoint, config.analysis (diffusion_jax.analyze)

A new mode is one decorated function in its own module, plus that module's name in
`_MODULES` (imported lazily, so `import diffusion_jax` stays light).
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable

from diffusion_jax import errors

_MODULES = ("diffusion_jax.train", "diffusion_jax.inference", "diffusion_jax.classifier_training",
            "diffusion_jax.analyze")


@dataclasses.dataclass(frozen=True)
class Mode:
  name: str
  run: Callable[[Any, str], Any]
  help: str


_MODES: dict[str, Mode] = {}


def register(name: str, help: str) -> Callable:  # pylint: disable=redefined-builtin
  """Decorator: `@modes.register("sample", "write samples")` on `fn(config, workdir)`."""

  def decorator(fn):
    if name in _MODES and _MODES[name].run is not fn:
      raise ValueError(f"a mode named {name!r} is already registered.")
    _MODES[name] = Mode(name, fn, help)
    return fn

  return decorator


def _load() -> None:
  for module in _MODULES:
    importlib.import_module(module)


def names() -> tuple[str, ...]:
  _load()
  return tuple(_MODES)


def get(name: str) -> Mode:
  """The mode `name`; the error lists every mode."""
  _load()
  if name not in _MODES:
    raise errors.ConfigError(f"--mode={name!r} is not a mode; choose one of "
                             f"{', '.join(map(repr, _MODES))}.")
  return _MODES[name]


def describe() -> str:
  """One line per mode, for --help."""
  _load()
  return "; ".join(f"{m.name}: {m.help}" for m in _MODES.values())
