"""Shared ophyd building blocks of the simulated instruments.

Every instrument needs the same three kinds of soft (hardware-free) object, and each
one corrects a default of ophyd that would make a simulated instrument behave less
like a real one in a RunEngine:

* :class:`ArraySignal`: a detector signal whose ``describe()`` gives the numpy dtype
  and the real shape of the array it holds, so that an event descriptor says what the
  events carry.
* :class:`LimitedPositioner`: a soft motor that refuses an out-of-range target before
  anything moves, with an error naming the motor, the target, its range and units.
* :class:`RangeSignal`: a settable numeric setting (an exposure time, a dose) that
  refuses out-of-range values in the caller's thread, and describes its units and
  range.

Out-of-range values raise :class:`ophyd.utils.LimitError` (a ``ValueError``) with one
message format: ``<name>=<value> <units> is outside the allowed range [<low>, <high>]
<units>``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from ophyd import Signal, SoftPositioner
from ophyd.status import StatusBase
from ophyd.utils import LimitError

__all__ = ["ArraySignal", "LimitedPositioner", "RangeSignal", "in_range", "range_error"]

_REAL_TYPES = (int, float, np.integer, np.floating)


def in_range(value: Any, low: float, high: float) -> bool:
    """Whether ``value`` is a finite real number within the inclusive range [low, high].

    Booleans, strings, arrays, NaN and infinities are never in range, so that a check
    built on this refuses them with a :class:`LimitError` instead of failing on the
    comparison (``TypeError``, or ``ValueError`` for an array's truth value) or, for
    NaN, letting a comparison that is always false decide.
    """
    if isinstance(value, bool) or not isinstance(value, _REAL_TYPES):
        return False
    return bool(np.isfinite(value) and low <= value <= high)


def range_error(name: str, value: Any, limits: tuple[float, float], units: str) -> LimitError:
    """The :class:`LimitError` for ``value`` outside ``limits``, naming the setting.

    The message names the setting, the refused value, the allowed range and the units,
    e.g. ``ins_ei=60.0 meV is outside the allowed range [5.0, 50.0] meV``, so that a
    user reading a failed plan's traceback knows which setting to change and to what.
    """
    low, high = limits
    unit = f" {units}" if units else ""
    return LimitError(f"{name}={value}{unit} is outside the allowed range [{low}, {high}]{unit}")


def _checked_limits(name: str, low: float, high: float, units: str) -> tuple[float, float]:
    """``(low, high)`` as floats, or a ValueError unless both are finite and low < high."""
    low, high = float(low), float(high)
    if not (np.isfinite(low) and np.isfinite(high) and low < high):
        unit = f" {units}" if units else ""
        raise ValueError(f"{name}: limits low={low} must be below high={high}{unit}")
    return low, high


class ArraySignal(Signal):
    """A soft signal holding a detector array, described with its real shape and dtype.

    Why: ophyd's ``Signal.describe()`` reports an ndarray value as dtype ``"array"``
    with its shape, but gives no ``dtype_numpy`` unless the signal was built with a
    fixed ``dtype`` and ``shape``. Without it, consumers of the event descriptor (such
    as bluesky-tiled-plugins' Tiled writer) must guess, and cannot tell float32 counts
    from float64 or uint8 masks; fixing the shape at class definition would not suit
    detectors whose frame size comes from a configuration. This signal describes
    whatever array it holds now: ``dtype="array"``, ``shape`` and ``dtype_numpy``
    (e.g. ``"<f4"``).

    A value that is not an ndarray (a temperature, a flag) is described as ophyd
    describes it, so one signal class serves a device whose computed signals mix
    arrays and scalars. ``units``, when given, is added to the description.
    """

    def __init__(self, *args: Any, units: str = "", **kwargs: Any) -> None:
        self._units = units
        super().__init__(*args, **kwargs)

    @property
    def units(self) -> str:
        """Units of the value ("" when none were given)."""
        return self._units

    def describe(self) -> dict[str, dict[str, Any]]:
        """ophyd's data key, with the array's shape and numpy dtype and the units."""
        description = super().describe()
        entry = description[self.name]
        value = self.get()
        if isinstance(value, np.ndarray):
            entry.update(dtype="array", shape=list(value.shape), dtype_numpy=value.dtype.str)
        if self._units:
            entry["units"] = self._units
        return description


class LimitedPositioner(SoftPositioner):
    """A soft motor that refuses targets outside its limits before anything moves.

    Why: ophyd's ``SoftPositioner`` checks its limits too, but its error reads
    ``position=60.0 not within limits (5.0, 50.0)``, naming neither the motor nor the
    units; inside a failed ``bp.scan`` that leaves the user guessing. This positioner
    raises :func:`range_error`'s :class:`LimitError` instead (e.g. ``sample_x=1.2 Ti
    fraction is outside the allowed range [0.0, 1.0] Ti fraction``) from
    ``check_value``, which ``move``/``set`` call before any motion, so the position is
    unchanged after a refused move. Non-numeric and non-finite targets are refused
    too, even without limits.

    Pass ``limits=(low, high)`` and ``egu`` (units) as for ``SoftPositioner``, or set
    the limits later with :meth:`set_limits` when they depend on a configuration
    (e.g. a stage's travel). As in ophyd, limits of ``(0, 0)`` (the default) mean
    "no limits".
    """

    def check_value(self, pos: Any) -> None:
        """Raise LimitError naming this motor if ``pos`` is not a number within the limits."""
        low, high = self.limits
        if low >= high:  # ophyd's convention for "no limits"
            low, high = -np.inf, np.inf
        if not in_range(pos, low, high):
            raise range_error(self.name, pos, (low, high), self.egu)

    def set_limits(self, low: float, high: float) -> None:
        """Set the inclusive limits [low, high] (in ``egu``); ValueError unless low < high."""
        self._limits = _checked_limits(self.name, low, high, self.egu)


class RangeSignal(Signal):
    """A settable numeric setting with an inclusive range and units, checked at once.

    Why: ophyd's ``Signal.set()`` calls ``put()`` (and so ``check_value``) in a
    background thread, so an out-of-range ``set`` returns a status that fails later
    instead of raising in the caller, and in a RunEngine ``bps.mv`` ends in a
    ``FailedStatus`` rather than the value's error. This signal checks in ``set()``
    itself (and in ``put()``, through ``check_value``) and raises :func:`range_error`'s
    :class:`LimitError`; the stored value is unchanged after a refusal.
    ``describe()`` adds ``units`` and the range as ``lower_ctrl_limit`` /
    ``upper_ctrl_limit``, as an EPICS-backed setting would, so the descriptor's
    configuration records what the setting meant.

    ``limits=(low, high)`` is required; :meth:`set_limits` changes it later (e.g. from
    a device's constructor arguments).
    """

    def __init__(
        self, *args: Any, limits: tuple[float, float], units: str = "", **kwargs: Any
    ) -> None:
        self._units = units
        super().__init__(*args, **kwargs)
        self._limits = _checked_limits(self.name, *limits, units)

    @property
    def limits(self) -> tuple[float, float]:
        """The inclusive range (low, high) of allowed values, in ``units``."""
        return self._limits

    @property
    def units(self) -> str:
        """Units of the value ("" when none were given)."""
        return self._units

    def set_limits(self, low: float, high: float) -> None:
        """Set the inclusive range [low, high]; ValueError unless low < high."""
        self._limits = _checked_limits(self.name, low, high, self._units)

    def check_value(self, value: Any) -> None:
        """Raise LimitError naming this setting unless ``value`` is a number in range."""
        super().check_value(value)
        if not in_range(value, *self._limits):
            raise range_error(self.name, value, self._limits, self._units)

    def set(self, value: Any, **kwargs: Any) -> StatusBase:
        """Check ``value`` now, in the caller (ophyd checks in its setting thread), then set."""
        self.check_value(value)
        return super().set(value, **kwargs)

    def describe(self) -> dict[str, dict[str, Any]]:
        """ophyd's data key with the units and the range as control limits."""
        description = super().describe()
        entry = description[self.name]
        if self._units:
            entry["units"] = self._units
        entry["lower_ctrl_limit"], entry["upper_ctrl_limit"] = self._limits
        return description
