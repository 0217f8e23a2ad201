"""``spinwave_cnn``: exchange constants (J1, J2, D) from inelastic neutron S(|Q|, E) maps.

Uncertainty: the network predicts, per constant, the location and scale of a
Laplace distribution: the locations are trained on the mean absolute error
(of the log constants, i.e. a relative error), the scales on the Laplace
negative log-likelihood of those residuals. One network
gives an honest spread at one pass per map; a deep ensemble would multiply the
five-minute training budget by its size. The scales are then calibrated on the
validation split so that the 68% interval covers 68% of it, and the test
split's coverage is reported in the model card. (This spread covers noise and
the ambiguity the data leave; a map far from the simulated training
distribution is not flagged by it.)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from smartlab_plugins.devices.dataset import SimulatedSet
from smartlab_plugins.models.preprocessing import bin_widths, log_binned_zscore, regrid_counts
from smartlab_plugins.models.training import Split

NAME = "spinwave_cnn"
VERSION = "1.1.0"  # 1.1: trained on the 3-D powder average (devices.ins average="powder")
PARAMETERS = ("j1", "j2", "d")
FIELD_SHAPE = (96, 160)
LAPLACE_68 = float(np.log(1 / 0.32))  # half-width of the central 68% of a Laplace, in scales
LOG_SCALE_RANGE = (-8.0, 2.0)  # ln of the Laplace scale, in normalised units


def parameter_ranges() -> dict[str, tuple[float, float]]:
    """The documented ranges the generator draws (J1, J2, D) from, in meV."""
    from smartlab_plugins.devices.ins import SpinWaveConfig

    config = SpinWaveConfig()
    return {"j1": config.j1_range, "j2": config.j2_range, "d": config.d_range}


def preprocess(maps: np.ndarray) -> np.ndarray:
    """Counts maps (n, 96, 160) to network input (n, 1, 48, 80).

    log1p of the counts, means over 2x2 bins, z-score per map (so the counting
    time, which scales every bin, does not matter).
    """
    maps = np.asarray(maps)
    if maps.ndim != 3 or maps.shape[1:] != FIELD_SHAPE:
        raise ValueError(f"expected maps of shape (n, 96, 160), got {maps.shape}")
    return log_binned_zscore(maps, (2, 2))


#: The map's axes in the order the model reads them, with the units it was trained in.
AXES = ("q", "energy")
AXIS_UNITS = {"q": "1/angstrom", "energy": "meV"}
AXIS_LABELS = {"q": "|Q|", "energy": "energy"}
#: Units a declared axis may have, with the factor that converts them to ``AXIS_UNITS``.
UNIT_FACTORS = {
    "q": {
        **dict.fromkeys(("1/angstrom", "angstrom^-1", "1/Å", "Å^-1", "Å-1", "1/A", "A^-1"), 1.0),
        **dict.fromkeys(("1/nm", "nm^-1"), 0.1),
    },
    "energy": {"meV": 1.0, "ueV": 1e-3, "µeV": 1e-3, "μeV": 1e-3, "eV": 1e3},
}
#: A declared bin this much wider than the training bins makes the grid "coarser".
COARSER_TOLERANCE = 1.01


def training_axes(generator_config: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
    """Bin centres of the grid the model was trained on, by axis (1/angstrom and meV).

    From the generator configuration in the model card (``q_min``, ``q_max``,
    ``n_q``, ``e_min``, ``e_max``, ``n_e``); missing keys take
    :class:`~smartlab_plugins.devices.ins.SpinWaveConfig`'s defaults.
    """
    from smartlab_plugins.devices.ins import SpinWaveConfig

    config = asdict(SpinWaveConfig()) | dict(generator_config or {})
    q = np.linspace(float(config["q_min"]), float(config["q_max"]), int(config["n_q"]) + 1)
    e = np.linspace(float(config["e_min"]), float(config["e_max"]), int(config["n_e"]) + 1)
    return {"q": 0.5 * (q[1:] + q[:-1]), "energy": 0.5 * (e[1:] + e[:-1])}


def declared_axes(
    data_key: dict[str, Any], field: str, shape: tuple[int, ...]
) -> tuple[dict[str, np.ndarray], tuple[str, ...]] | None:
    """The bin centres a map's data key declares, in ``AXIS_UNITS``, and its ``dims`` order.

    None when the data key has no ``coords``. Raises ValueError naming ``field``
    when the declaration cannot be used: ``dims`` (default ``["q", "energy"]``)
    whose last two entries are not ``q`` and ``energy``, an axis missing from
    ``coords``, values that are not a strictly monotonic list of one finite
    number per bin of the map's ``shape``, or units other than those in
    :data:`UNIT_FACTORS`.
    """
    coords = data_key.get("coords")
    if not coords:
        return None
    dims = tuple(data_key.get("dims") or AXES)[-2:]
    if sorted(dims) != sorted(AXES) or len(shape) < 2:
        raise ValueError(
            f"field {field!r} declares dims {list(data_key.get('dims') or [])}; "
            f"expected the last two to be {list(AXES)} (in either order)"
        )
    axes: dict[str, np.ndarray] = {}
    for dim, size in zip(dims, shape[-2:], strict=True):
        entry = coords.get(dim) if isinstance(coords, dict) else None
        if not isinstance(entry, dict) or "values" not in entry:
            raise ValueError(f"field {field!r} declares coords without values for axis {dim!r}")
        units = entry.get("units")
        if units not in UNIT_FACTORS[dim]:
            raise ValueError(
                f"field {field!r} declares axis {dim!r} in units {units!r}; expected one of "
                f"{sorted(UNIT_FACTORS[dim])}"
            )
        try:
            values = np.asarray(entry["values"], dtype=np.float64) * UNIT_FACTORS[dim][units]
        except (TypeError, ValueError):
            raise ValueError(f"field {field!r} declares non-numeric coords for {dim!r}") from None
        steps = np.diff(values)
        monotonic = (steps > 0).all() or (steps < 0).all()
        if values.shape != (size,) or not np.isfinite(values).all() or not monotonic:
            raise ValueError(
                f"field {field!r} declares {values.size} coords for axis {dim!r} of {size} bins; "
                "expected one finite bin centre per bin, strictly increasing or decreasing"
            )
        axes[dim] = values
    return axes, dims


@dataclass(frozen=True)
class Regridding:
    """How a map with declared axes reaches the training grid (see :func:`plan_regrid`)."""

    source: dict[str, np.ndarray]  # declared bin centres by axis, in AXIS_UNITS
    dims: tuple[str, ...]  # the declared order of the map's last two axes
    target: dict[str, np.ndarray]  # training bin centres
    identity: bool  # the declared grid is the training grid: nothing to do
    partial: list[str]  # why the coverage is only partial (empty when complete)

    def apply(self, maps: np.ndarray) -> np.ndarray:
        """Maps (n, rows, columns) on the declared grid to (n, n_q, n_e) on the training grid."""
        maps = np.asarray(maps)
        if self.dims != AXES:
            maps = np.swapaxes(maps, -1, -2)
        if self.identity:
            return maps
        return regrid_counts(
            maps,
            (self.source["q"], self.source["energy"]),
            (self.target["q"], self.target["energy"]),
        )


def _span(values: np.ndarray, units: str) -> str:
    return f"{values.min():.4g} to {values.max():.4g} {units}"


def plan_regrid(
    axes: dict[str, np.ndarray],
    dims: tuple[str, ...],
    target: dict[str, np.ndarray],
    field: str,
    plugin: str = NAME,
) -> Regridding:
    """Check that declared bin centres cover the training grid, and say how to map onto it.

    Needed, per axis: the training bin centres (the points the map is
    interpolated at). Declared: the extent of the declared bins, half a bin
    beyond the outer centres. A map whose declared extent misses a needed
    centre is refused with a ValueError naming the field, the declared and the
    needed range. Coverage is partial, and the reasons listed, when a needed
    centre lies beyond the outer declared centres (inside the outer half bin,
    where the outer bin's value is used), when the declared bins are wider
    than the training bins (the map has less detail than the model learned from),
    or narrower (the counts per bin are rescaled, so their noise and the
    simulator's per-bin background differ from the training maps'): more than
    1% either way.
    """
    partial: list[str] = []
    for dim in AXES:
        source, needed = axes[dim], target[dim]
        widths = bin_widths(source)
        lo = min(source[0] - widths[0] / 2, source[-1] - widths[-1] / 2)
        hi = max(source[0] + widths[0] / 2, source[-1] + widths[-1] / 2)
        step = float(np.min(bin_widths(needed)))
        slack = 1e-6 * step
        units, label = AXIS_UNITS[dim], AXIS_LABELS[dim]
        if lo > needed.min() + slack or hi < needed.max() - slack:
            edges = needed.min() - step / 2, needed.max() + step / 2
            raise ValueError(
                f"{plugin}: field {field!r} covers {label} {lo:.4g} to {hi:.4g} {units} "
                f"(its declared bins) but the model needs {_span(needed, units)} (the centres "
                f"of its training bins, {edges[0]:.4g} to {edges[1]:.4g} {units}); "
                "the map is not analysed"
            )
        if source.min() > needed.min() + slack or source.max() < needed.max() - slack:
            partial.append(
                f"{label} centres {_span(source, units)} only just cover the needed "
                f"{_span(needed, units)}"
            )
        if widths.max() > COARSER_TOLERANCE * step:
            partial.append(
                f"{label} bins {widths.max():.4g} {units} wide, coarser than the training "
                f"bins ({step:.4g} {units})"
            )
        elif widths.min() < step / COARSER_TOLERANCE:
            partial.append(
                f"{label} bins {widths.min():.4g} {units} wide, finer than the training "
                f"bins ({step:.4g} {units}): counts per bin rescaled"
            )
    identity = all(
        len(axes[d]) == len(target[d])
        and np.allclose(axes[d], target[d], rtol=0, atol=1e-6 * np.min(bin_widths(target[d])))
        for d in AXES
    )
    return Regridding(axes, tuple(dims), target, identity, partial)


class SpinWaveTask:
    """Training and scoring of ``spinwave_cnn`` (see :mod:`smartlab_plugins.models.training`)."""

    name = NAME
    version = VERSION
    kind = "regression"
    case = "ins"
    outputs: tuple[str, ...] = PARAMETERS
    input_field_shape = FIELD_SHAPE

    def __init__(self) -> None:
        self.ranges = parameter_ranges()
        bounds = np.log(np.array([self.ranges[p] for p in PARAMETERS], dtype=np.float64))
        self._low = bounds[:, 0].astype(np.float32)
        self._span = (bounds[:, 1] - bounds[:, 0]).astype(np.float32)

    def generator_config(self) -> dict[str, Any]:
        from smartlab_plugins.devices.ins import SpinWaveConfig

        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in asdict(SpinWaveConfig()).items()
        }

    def make_data(self, n: int, seed: int) -> Split:
        from smartlab_plugins.cases import simulate_case

        return self.from_set(simulate_case("ins", n, seed=seed))

    def from_set(self, made: SimulatedSet) -> Split:
        """Network inputs, normalised targets and the truth (meV) of a simulated INS set."""
        truth = np.stack([made.labels[p] for p in PARAMETERS], axis=1)
        return Split(preprocess(made.inputs["sqw"]), self.normalise(truth), {"truth": truth})

    def normalise(self, values: np.ndarray) -> np.ndarray:
        """Targets on a log scale mapped to [0, 1]: absolute errors there are relative errors."""
        return ((np.log(values) - self._low) / self._span).astype(np.float32)

    def physical(self, normalised: np.ndarray) -> np.ndarray:
        return np.exp(normalised * self._span + self._low)

    def architecture(self) -> dict[str, Any]:
        return {"class": "SpinWaveNet", "params": {"n_outputs": len(PARAMETERS)}}

    def preprocessing(self) -> dict[str, Any]:
        return {
            "steps": ["log1p(counts)", "mean over 2x2 bins -> 48x80", "z-score per map"],
            "targets": "(ln value - ln low) / (ln high - ln low) per constant, ranges in meV",
            "ranges_meV": {p: list(r) for p, r in self.ranges.items()},
        }

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean absolute error of the locations, plus the Laplace NLL of the scales.

        The scales see the residuals detached, so they learn how large the
        error is without pulling on the locations (a joint NLL lets the network
        inflate its scales early and stop learning the constants).
        """
        location, log_scale = split_output(output)
        residual = (target - location).abs()
        return (residual + residual.detach() * torch.exp(-log_scale) + log_scale).mean()

    def selection_score(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean absolute error of the locations: the scales must not decide which epoch is kept."""
        location, _ = split_output(output)
        return (target - location).abs().mean()

    def calibrate(self, net: torch.nn.Module, validation: Split) -> dict[str, Any]:
        """Scale factor for the predicted scales so the 68% interval covers 68% of validation."""
        from smartlab_plugins.models.training import predict

        location, log_scale = split_output(predict(net, validation.x))
        ratio = (torch.as_tensor(validation.y) - location).abs() / torch.exp(log_scale)
        factors = (torch.quantile(ratio, 0.68, dim=0) / LAPLACE_68).tolist()
        return {"scale_calibration": dict(zip(PARAMETERS, factors, strict=True))}

    def evaluate(
        self, output: torch.Tensor, split: Split, calibration: dict | None = None
    ) -> dict[str, Any]:
        mean, std = self.interpret(output, calibration)
        truth = split.extra["truth"]
        metrics: dict[str, Any] = {}
        for i, p in enumerate(PARAMETERS):
            error = np.abs(mean[:, i] - truth[:, i])
            metrics[p] = {
                "relative_mae": float(np.mean(error / truth[:, i])),
                "mae_meV": float(np.mean(error)),
                "coverage_68": float(np.mean(error <= std[:, i] * LAPLACE_68 / np.sqrt(2))),
            }
        metrics["n"] = len(truth)
        return metrics

    def interpret(
        self, output: torch.Tensor, calibration: dict | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Means and standard deviations (meV) from raw network outputs."""
        location, log_scale = split_output(output)
        factors_by_name = (calibration or {}).get("scale_calibration", {})
        factors = np.array([factors_by_name.get(p, 1.0) for p in PARAMETERS], dtype=np.float32)
        mean = self.physical(location.numpy())
        relative_scale = torch.exp(log_scale).numpy() * factors * self._span  # of ln(value)
        return mean, np.sqrt(2.0) * relative_scale * mean


#: Instrument settings the model was trained at, by the spectrometer's read keys, and how far
#: a measurement may stray from them (relative) before its results are flagged.
TRAINING_CONDITIONS = {"ins_ei": ("ei", 0.05), "ins_temperature": ("temperature", 0.5)}


def outside_training(
    context: dict[str, np.ndarray], generator_config: dict[str, Any], n: int
) -> np.ndarray:
    """Per event, whether Ei or the temperature differ from the training conditions.

    The network saw maps at one Ei and temperature only; away from them the
    Bose factor and resolution change the maps and the estimates drift (by
    about 30% in D at 60 K for a model trained at 5 K). ``n`` is the number of
    events; fields absent from the events are not judged.
    """
    flagged = np.zeros(n, dtype=bool)
    for field, (setting, tolerance) in TRAINING_CONDITIONS.items():
        if field in context and setting in generator_config:
            trained = float(generator_config[setting])
            flagged |= (
                np.abs(np.asarray(context[field], dtype=float) - trained) > tolerance * trained
            )
    return flagged


def split_output(output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Locations, and log scales squashed smoothly into LOG_SCALE_RANGE.

    A hard clamp would stop the gradient of a scale that strays outside the
    range, and with it the training; tanh keeps it flowing.
    """
    n = output.shape[1] // 2
    low, high = LOG_SCALE_RANGE
    middle, half = (high + low) / 2, (high - low) / 2
    return output[:, :n], middle + half * torch.tanh(output[:, n:] / half)
