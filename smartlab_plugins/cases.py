"""The simulated instruments' labelled data sets ("cases"), by name, and how they are made.

:data:`CASES` is the one table of them: for each case, the device module whose
physics generates it and the model trained on it. ``smartlab simulate`` writes
a case to a file; training, fine-tuning, evaluation and the benchmarks make
them in memory with :func:`simulate_case`.

A set of ``n`` samples is made in chunks so that a progress bar can follow it:
with ``n <= chunk`` it is exactly ``simulate(n, seed)`` of the instrument's
module; otherwise chunk ``i`` is generated with the ``i``-th seed spawned from
``numpy.random.SeedSequence(seed)``. Either way the set is determined by
``(case, n, seed, chunk)``, which are stored with the generator's config in
the set's ``config``.

The module imports no numpy at import time, so that the command line can list
the cases at once.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from smartlab_plugins.settings import ConfigurationError

if TYPE_CHECKING:
    from smartlab_plugins.devices.dataset import SimulatedSet


@dataclass(frozen=True)
class Case:
    """Where one case's samples come from, and which model learns from them."""

    #: the instrument's module: ``simulate(n, seed, config)``, ``make_devices()``, the config
    device: str
    #: the generator config class in :attr:`device` (a dataclass of the instrument's settings)
    config: str
    #: the model trained on this case: a name of :data:`smartlab_plugins.models.registry.TASKS`
    task: str


CASES: dict[str, Case] = {
    "ins": Case("smartlab_plugins.devices.ins", "SpinWaveConfig", "spinwave_cnn"),
    "mpb": Case("smartlab_plugins.devices.mpb", "MPBConfig", "phase_cnn"),
    "operando": Case("smartlab_plugins.devices.operando", "OperandoConfig", "transition_lstm"),
    "microscopy": Case(
        "smartlab_plugins.devices.microscopy", "MicroscopyConfig", "micrograph_unet"
    ),
}
DEFAULT_CHUNK = 1000


def _case(name: str) -> Case:
    """The table's entry for ``name``, or a KeyError naming the cases there are."""
    if name not in CASES:
        raise KeyError(f"unknown case {name!r}; choose one of {', '.join(CASES)}")
    return CASES[name]


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
    import numpy as np
    from tqdm.auto import tqdm

    from smartlab_plugins.devices.dataset import SimulatedSet

    entry = _case(case)
    if n < 1 or chunk < 1:
        raise ValueError(f"n and chunk must be positive, got n={n}, chunk={chunk}")
    generator = importlib.import_module(entry.device).simulate
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


def configured(case: str, overrides: dict[str, str]) -> Any:
    """The instrument's default generator config with ``overrides`` (text values) applied.

    Text, because the values come from ``smartlab simulate --set KEY=VALUE``: a
    number or word is converted to the setting's type, a sequence is read as
    JSON. Raises :class:`ConfigurationError` naming the valid settings for an
    unknown one, and the expected type for a value that does not parse.
    """
    entry = _case(case)
    config_type = getattr(importlib.import_module(entry.device), entry.config)
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
