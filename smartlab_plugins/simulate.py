"""``smartlab simulate``: labelled data sets from the instruments' generators, to a file.

A set of ``n`` samples is made in chunks so that a progress bar can follow it:
with ``n <= chunk`` it is exactly ``simulate(n, seed)`` of the instrument's
module; otherwise chunk ``i`` is generated with the ``i``-th seed spawned from
``numpy.random.SeedSequence(seed)``. Either way the set is determined by
``(case, n, seed, chunk)``, which are stored with the generator's config in
the file's attributes.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from smartlab_plugins.devices.dataset import SimulatedSet
from smartlab_plugins.settings import ConfigurationError

CASES = {
    "ins": "smartlab_plugins.devices.ins",
    "mpb": "smartlab_plugins.devices.mpb",
    "operando": "smartlab_plugins.devices.operando",
    "microscopy": "smartlab_plugins.devices.microscopy",
}
CONFIGS = {
    "ins": "SpinWaveConfig",
    "mpb": "MPBConfig",
    "operando": "OperandoConfig",
    "microscopy": "MicroscopyConfig",
}
DEFAULT_CHUNK = 1000


def simulate_case(
    case: str,
    n: int,
    seed: int = 0,
    chunk: int = DEFAULT_CHUNK,
    progress: bool = True,
    config: Any = None,
) -> SimulatedSet:
    """``n`` labelled samples of ``case`` (one of :data:`CASES`), deterministic for the seed.

    ``config`` is the instrument's generator config (its module's default if None).
    """
    if case not in CASES:
        raise KeyError(f"unknown case {case!r}; choose one of {', '.join(CASES)}")
    if n < 1 or chunk < 1:
        raise ValueError(f"n and chunk must be positive, got n={n}, chunk={chunk}")
    generator = importlib.import_module(CASES[case]).simulate
    sizes = [min(chunk, n - start) for start in range(0, n, chunk)]
    if len(sizes) == 1:
        seeds = [seed]
    else:
        seeds = [
            int(s.generate_state(1)[0]) for s in np.random.SeedSequence(seed).spawn(len(sizes))
        ]
    parts = []
    with tqdm(total=n, unit="sample", desc=f"simulate {case}", disable=not progress) as bar:
        for size, part_seed in zip(sizes, seeds, strict=True):
            parts.append(generator(size, seed=part_seed, config=config))
            bar.update(size)
    first = parts[0]
    return SimulatedSet(
        case=first.case,
        seed=seed,
        inputs={k: np.concatenate([p.inputs[k] for p in parts]) for k in first.inputs},
        labels={k: np.concatenate([p.labels[k] for p in parts]) for k in first.labels},
        coords=first.coords,
        units=first.units,
        config={**first.config, "n": n, "chunk": chunk, "seed": seed},
    )


def write_case(
    case: str,
    n: int,
    out: Path,
    seed: int = 0,
    chunk: int = DEFAULT_CHUNK,
    overrides: dict[str, str] | None = None,
) -> Path:
    """Simulate (with config ``overrides``, e.g. a shifted instrument) and save to HDF5."""
    config = configured(case, overrides or {})
    return simulate_case(case, n, seed=seed, chunk=chunk, config=config).save(out)


def configured(case: str, overrides: dict[str, str]) -> Any:
    """The instrument's default generator config with ``overrides`` (text values) applied.

    Raises :class:`ConfigurationError` naming the valid settings for an unknown
    one, and the expected type for a value that does not parse.
    """
    import dataclasses
    import json

    config_type = getattr(importlib.import_module(CASES[case]), CONFIGS[case])
    defaults = config_type()
    changes = {}
    for key, text in overrides.items():
        if not hasattr(defaults, key):
            names = ", ".join(f.name for f in dataclasses.fields(config_type))
            raise ConfigurationError(
                f"{config_type.__name__} has no setting {key!r}; settings: {names}"
            )
        current = getattr(defaults, key)
        if dataclasses.is_dataclass(current):
            raise ConfigurationError(
                f"{config_type.__name__}.{key} is a group of settings; --set takes single values"
            )
        sequence = isinstance(current, (tuple, list))
        try:
            value = json.loads(text) if sequence else type(current)(text)
            if sequence and not isinstance(value, list):
                raise ValueError(text)
        except ValueError:
            expected = json.dumps(list(current)) if sequence else repr(current)
            raise ConfigurationError(
                f"{config_type.__name__}.{key}: expected a value like {expected}, got {text!r}"
            ) from None
        changes[key] = tuple(value) if isinstance(current, tuple) else value
    return dataclasses.replace(defaults, **changes)
