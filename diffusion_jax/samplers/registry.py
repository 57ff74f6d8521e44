"""The sampler registry: each sampler declares its name, function, options and preparation once.

A sampler module registers itself at import:

  registry.register(registry.Sampler(
      name="ddim", run=ddim_sample_loop, section="ddim", summary="DDIM (Song et al. 2021)",
      options=(registry.Option("eta", 0.0, "stochasticity: 0 deterministic, 1 DDPM-like",
                               minimum=0.0),)))

Everything else reads the declaration: `samplers.sample` validates the options and calls `run`,
`configs/default.py` builds `config.sampling.<section>` from the options (so a config override
like `--config.sampling.ddim.eta=0.5` exists as soon as the module is imported), the config
validator checks the configured values, and the inference module passes them through unchanged.
`python -m diffusion_jax.samplers` prints every sampler with its options.

`run(model_fn, schedule, shape, key, *, mean_type, var_type, clip_denoised, num_steps, x_T,
return_trajectory, **options)` returns x_0 [B, H, W, C] (or (x_0, trajectory)); num_steps=None
means the sampler's default. A sampler with a `prepare` step (Analytic-DPM's Gamma) is given
its outputs (the names in `prepared`) as extra keyword arguments; `prepare(model_fn, schedule,
key, load_images, *, mean_type, var_type, **options) -> dict` runs once per model, where
`load_images(n)` returns n training images [n, H, W, C] in [-1, 1].
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Optional

from ml_collections import config_dict


@dataclasses.dataclass(frozen=True)
class Option:
  """One typed sampler option with its default, meaning and allowed values.

  The type is that of `default` (`kind` when the default is None); ints are accepted where a
  float is expected. `choices` lists the allowed values; `minimum`/`maximum` bound numbers.
  """
  name: str
  default: Any
  help: str
  choices: Optional[tuple] = None
  minimum: Optional[float] = None
  maximum: Optional[float] = None
  kind: Optional[type] = None

  @property
  def type(self) -> type:
    return self.kind or type(self.default)

  def problem(self, value: Any) -> Optional[str]:
    """Why `value` is not allowed (None when it is)."""
    if value is None:
      return None if self.default is None else f"must be a {self.type.__name__}, not None."
    expected = self.type
    if expected is float:
      ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    elif expected is int:
      ok = isinstance(value, int) and not isinstance(value, bool)
    else:
      ok = isinstance(value, expected)
    if not ok:
      return f"must be a {'finite ' if expected is float else ''}{expected.__name__}."
    if self.choices is not None and value not in self.choices:
      return f"choose one of {', '.join(map(repr, self.choices))}."
    if self.minimum is not None and value < self.minimum:
      return f"must be >= {self.minimum}."
    if self.maximum is not None and value > self.maximum:
      return f"must be <= {self.maximum}."
    return None


@dataclasses.dataclass(frozen=True)
class Sampler:
  """A sampler's declaration (see the module docstring for `run` and `prepare`).

  Attributes:
    name: what `config.sampling.sampler` selects.
    run: the sampling function.
    summary: one line: the method and its paper.
    section: config section `config.sampling.<section>` of the options; samplers that share a
      section (dpm_solver and dpm_solver++) declare the same options. Default: `name`.
    options: the declared keyword options of `run` (besides the common ones).
    prepare: optional once-per-model step whose outputs `run` needs.
    prepared: names of the keyword arguments `prepare` returns.
    check: optional cross-option check: check(options, num_steps, num_timesteps) -> problem text
      or None (e.g. an option that needs another one).
  """
  name: str
  run: Callable[..., Any]
  summary: str
  section: Optional[str] = None
  options: tuple[Option, ...] = ()
  prepare: Optional[Callable[..., dict]] = None
  prepared: tuple[str, ...] = ()
  check: Optional[Callable[[dict, Optional[int], int], Optional[str]]] = None

  @property
  def config_section(self) -> str:
    return self.section or self.name

  def defaults(self) -> dict:
    return {option.name: option.default for option in self.options}


_SAMPLERS: dict[str, Sampler] = {}


def register(sampler: Sampler) -> Sampler:
  """Adds `sampler` to the registry (a name may be registered once; see `unregister`)."""
  if sampler.name in _SAMPLERS:
    raise ValueError(f"a sampler named {sampler.name!r} is already registered.")
  for other in _SAMPLERS.values():
    if other.config_section == sampler.config_section and other.options != sampler.options:
      raise ValueError(f"samplers {other.name!r} and {sampler.name!r} share the config section "
                       f"{sampler.config_section!r} but declare different options.")
  _SAMPLERS[sampler.name] = sampler
  return sampler


def unregister(name: str) -> None:
  """Removes a sampler (tests that register a temporary one clean up with this)."""
  _SAMPLERS.pop(name, None)


def names() -> tuple[str, ...]:
  """Every registered sampler name, in registration order."""
  return tuple(_SAMPLERS)


def get(name: str) -> Sampler:
  """The declaration of `name`; the error lists every registered name."""
  if name not in _SAMPLERS:
    raise ValueError(f"sampler={name!r} is not supported; choose one of "
                     f"{', '.join(map(repr, _SAMPLERS))}.")
  return _SAMPLERS[name]


def at_most_num_timesteps(options: dict, num_steps: Optional[int], num_timesteps: int
                          ) -> Optional[str]:
  """`check` of samplers that walk the discrete chain: num_steps <= T."""
  del options
  if num_steps is not None and num_steps > num_timesteps:
    return (f"num_steps={num_steps} is more than the {num_timesteps} steps of the chain "
            "(diffusion.num_timesteps); use at most that, or leave it unset for all of them.")
  return None


def resolve_options(name: str, options: Mapping[str, Any], *, num_steps: Optional[int],
                    num_timesteps: int, where: Optional[str] = None) -> dict:
  """The declared options of `name` with defaults filled in; raises ValueError on a bad one.

  Args:
    name: a registered sampler.
    options: option values (a subset of the declared names).
    num_steps, num_timesteps: for the sampler's cross-option check.
    where: how errors name an option, e.g. "config.sampling.ddim" (default: "sampler 'ddim'
      option").

  Returns:
    {option name: value} for every declared option.
  """
  sampler = get(name)
  prefix = f"{where}." if where else f"sampler {name!r} option "
  declared = sampler.defaults()
  unknown = sorted(set(options) - set(declared))
  if unknown:
    allowed = ", ".join(declared) if declared else "none"
    raise ValueError(f"{prefix}{unknown[0]}: sampler {name!r} has no such option; its options "
                     f"are: {allowed}.")
  resolved = {**declared, **options}
  for option in sampler.options:
    problem = option.problem(resolved[option.name])
    if problem:
      raise ValueError(f"{prefix}{option.name}={resolved[option.name]!r}: {problem}")
  if num_steps is not None and (not isinstance(num_steps, int) or isinstance(num_steps, bool)
                                or num_steps < 1):
    raise ValueError(f"num_steps={num_steps!r}: must be an integer >= 1 (or None for the "
                     "sampler's default).")
  if sampler.check is not None:
    problem = sampler.check(resolved, num_steps, num_timesteps)
    if problem:
      raise ValueError(f"sampler {name!r}: {problem}")
  return resolved


def config_sections() -> config_dict.ConfigDict:
  """One ConfigDict per declared section, holding its options' defaults (for configs/default.py).

  Options whose default is None become placeholders of their declared `kind`, so they can be
  set from the command line.
  """
  sections = config_dict.ConfigDict()
  for sampler in _SAMPLERS.values():
    if not sampler.options or sampler.config_section in sections:
      continue
    section = config_dict.ConfigDict()
    for option in sampler.options:
      section[option.name] = (config_dict.placeholder(option.kind) if option.default is None
                              else option.default)
    sections[sampler.config_section] = section
  return sections


def options_from_config(sampling_config: Any) -> dict:
  """The configured sampler's options, read from `config.sampling.<section>`."""
  sampler = get(sampling_config.sampler)
  if not sampler.options:
    return {}
  section = sampling_config[sampler.config_section]
  return {option.name: section[option.name] for option in sampler.options}


def describe() -> str:
  """A plain-text table of every sampler and its options (`python -m diffusion_jax.samplers`)."""
  lines, shown = [], set()
  for sampler in _SAMPLERS.values():
    lines.append(f"{sampler.name}: {sampler.summary}")
    section = sampler.config_section
    if section in shown:
      lines.append(f"    options: config.sampling.{section}, as above")
      continue
    shown.add(section)
    for option in sampler.options:
      allowed = f" {{{', '.join(map(str, option.choices))}}}" if option.choices else ""
      lines.append(f"    config.sampling.{section}.{option.name} = {option.default!r}{allowed}: "
                   f"{option.help}")
    if sampler.prepare is not None:
      lines.append(f"    (prepared once per model: {', '.join(sampler.prepared)})")
  return "\n".join(lines)
