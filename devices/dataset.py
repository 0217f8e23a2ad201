"""A labelled simulated data set, as every instrument's generator returns it.

The same physics that a device computes when a RunEngine triggers it makes
the training sets: ``simulate(n, seed, config)`` in each instrument module
returns a :class:`SimulatedSet`, deterministic for a seed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class SimulatedSet:
    """``n`` labelled samples from one instrument's generator.

    ``inputs`` and ``labels`` hold arrays with ``n`` entries on axis 0 (what a
    detector would measure; the hidden truth). ``coords`` holds the axes that
    are the same for every sample (e.g. |Q| and energy-transfer bin centres),
    with their units in ``units``. ``config`` is the generator's configuration
    (JSON-clean) and ``seed`` the seed that, with it, reproduces the set.
    """

    case: str
    seed: int
    inputs: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    coords: dict[str, np.ndarray] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        first = next(iter(self.inputs.values()))
        return len(first)

    def save(self, path: str | Path) -> Path:
        """Write the set to HDF5, with the config and seed as attributes."""
        import json

        import h5py

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(path, "w") as f:
            f.attrs["case"] = self.case
            f.attrs["seed"] = self.seed
            f.attrs["config"] = json.dumps(self.config)
            f.attrs["units"] = json.dumps(self.units)
            for group_name in ("inputs", "labels", "coords"):
                group = f.create_group(group_name)
                for key, value in getattr(self, group_name).items():
                    group.create_dataset(
                        key, data=value, compression="gzip" if value.ndim > 1 else None
                    )
        return path

    @classmethod
    def load(cls, path: str | Path) -> SimulatedSet:
        """Read a set written by :meth:`save`."""
        import json

        import h5py

        with h5py.File(path, "r") as f:
            groups = {
                name: {k: v[()] for k, v in f[name].items()}
                for name in ("inputs", "labels", "coords")
            }
            return cls(
                case=str(f.attrs["case"]),
                seed=int(f.attrs["seed"]),
                config=json.loads(f.attrs["config"]),
                units=json.loads(f.attrs["units"]),
                **groups,
            )


def config_dict(config: Any) -> dict[str, Any]:
    """A generator config (a dataclass) as a JSON-clean dict."""
    if is_dataclass(config):
        config = asdict(config)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(config).items()}
