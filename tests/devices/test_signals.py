"""The shared signal and positioner classes of the simulated instruments."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import bluesky.plan_stubs as bps
import numpy as np
import pytest
from bluesky import RunEngine
from ophyd.utils import LimitError

from smartlab_plugins.devices.signals import (
    ArraySignal,
    LimitedPositioner,
    RangeSignal,
    in_range,
    range_error,
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        *[(1.0, True), (0, True), (2, True), (np.float32(1.5), True), (np.int64(1), True)],
        *[(-0.1, False), (2.1, False), (float("nan"), False), (float("inf"), False)],
        *[(True, False), ("1", False), (np.array([1.0]), False), (None, False)],
    ],
)
def test_in_range_accepts_only_finite_real_numbers(value: object, expected: bool) -> None:
    assert in_range(value, 0.0, 2.0) is expected


def test_range_error_names_setting_value_range_and_units() -> None:
    error = range_error("det_dose", 0.5, (1.0, 10.0), "electrons/pixel")
    assert isinstance(error, LimitError) and isinstance(error, ValueError)
    expected = "det_dose=0.5 electrons/pixel is outside the allowed range [1.0, 10.0]"
    assert str(error) == expected + " electrons/pixel"
    assert str(range_error("x", 3, (0, 1), "")) == "x=3 is outside the allowed range [0, 1]"


def test_array_signal_describes_shape_dtype_and_units() -> None:
    signal = ArraySignal(name="det_image", value=np.zeros((3, 4), np.float32), units="counts")
    key = signal.describe()["det_image"]
    assert key == {
        "source": "SIM:det_image",
        "dtype": "array",
        "shape": [3, 4],
        "dtype_numpy": "<f4",
        "units": "counts",
    }
    signal.put(np.zeros(5, np.uint8))
    assert signal.describe()["det_image"]["shape"] == [5]
    assert signal.describe()["det_image"]["dtype_numpy"] == "|u1"


def test_array_signal_describes_scalars_as_ophyd_does() -> None:
    signal = ArraySignal(name="det_temperature", value=300.0)
    assert signal.describe()["det_temperature"] == {
        "source": "SIM:det_temperature",
        "dtype": "number",
        "shape": [],
    }


def test_limited_positioner_refuses_before_motion() -> None:
    motor = LimitedPositioner(name="stage_x", limits=(0.0, 5.0), egu="mm", init_pos=1.0)
    for bad in (5.5, -1.0, float("nan"), "2"):
        with pytest.raises(LimitError, match=r"stage_x=.* mm is outside .*\[0\.0, 5\.0\] mm"):
            motor.set(bad)
    assert motor.position == 1.0
    with pytest.raises(LimitError, match="stage_x=9"):
        RunEngine({})(bps.mv(motor, 9.0))
    assert motor.position == 1.0
    motor.set(5.0).wait(10)
    assert motor.position == 5.0


def test_limited_positioner_without_limits_refuses_only_non_numbers() -> None:
    motor = LimitedPositioner(name="stage_y", egu="um", init_pos=0.0)
    motor.move(1e6)  # limits (0, 0): no limits, as in ophyd
    with pytest.raises(LimitError, match="stage_y=inf um"):
        motor.move(float("inf"))
    assert motor.position == 1e6


def test_range_signal_checks_in_the_caller_and_describes_units_and_limits() -> None:
    signal = RangeSignal(name="det_time", value=1.0, limits=(0.01, 100.0), units="s")
    with pytest.raises(LimitError, match=r"det_time=0\.0 s is outside the allowed range"):
        signal.set(0.0)  # raised here, not in ophyd's setting thread
    with pytest.raises(LimitError, match="det_time=200"):
        signal.put(200.0)
    assert signal.get() == 1.0
    signal.set(2.5).wait(10)
    assert signal.get() == 2.5
    key = signal.describe()["det_time"]
    assert key["units"] == "s"
    assert (key["lower_ctrl_limit"], key["upper_ctrl_limit"]) == (0.01, 100.0)


@pytest.mark.parametrize(
    "make",
    [
        lambda: LimitedPositioner(name="dev_x", egu="um", init_pos=1.0),
        lambda: RangeSignal(name="dev_x", value=1.0, limits=(0.01, 100.0), units="um"),
    ],
    ids=["LimitedPositioner", "RangeSignal"],
)
def test_set_limits_changes_the_range_and_refuses_an_empty_one(make: Callable[[], Any]) -> None:
    device = make()
    device.set_limits(0, 10)
    assert device.limits == (0.0, 10.0)
    with pytest.raises(LimitError, match=r"dev_x=11\.0 um .*\[0\.0, 10\.0\] um"):
        device.set(11.0)
    device.set(10.0).wait(10)
    with pytest.raises(ValueError, match=r"dev_x: limits low=3\.0 must be below high=3\.0 um"):
        device.set_limits(3.0, 3.0)
    assert device.limits == (0.0, 10.0)
