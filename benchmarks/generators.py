"""How fast the instruments' generators make labelled training data.

Times ``simulate(n)`` of each instrument once (after a one-sample warm-up) and
writes the samples per second to docs/benchmarks.md; the INS case is timed at
the 10,000 maps its issue asks for (target: under 2 minutes on 2 cores).

    python benchmarks/generators.py [--ins 10000] [--others 1000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from smartlab_plugins.cases import CASES, simulate_case

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import figure, machine, record, write_section


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ins", type=int, default=10_000, help="INS maps to make")
    parser.add_argument("--others", type=int, default=1_000, help="samples of the other cases")
    args = parser.parse_args()
    rows = []
    for case in CASES:
        n = args.ins if case == "ins" else args.others
        simulate_case(case, 1, seed=0, progress=False)  # imports, caches (e.g. a specimen)
        started = time.perf_counter()
        made = simulate_case(case, n, seed=1, progress=False)
        elapsed = time.perf_counter() - started
        shape = "x".join(map(str, next(iter(made.inputs.values())).shape[1:]))
        rows.append((case, n, shape, elapsed))
        print(f"{case}: {n} samples of {shape} in {elapsed:.1f} s", flush=True)
    ins_time = next(elapsed for case, _, _, elapsed in rows if case == "ins")
    lines = [
        "## Simulators (`benchmarks/generators.py`)",
        "",
        "| case | samples | one sample | time | samples / s |",
        "|---|---|---|---|---|",
        *[f"| {c} | {n} | {shape} | {t:.1f} s | {n / t:,.0f} |" for c, n, shape, t in rows],
        "",
        f"Target: 10,000 INS maps in under 2 minutes on 2 cores. Measured: {args.ins} maps in "
        f"{ins_time:.1f} s ({'met' if args.ins >= 10_000 and ins_time < 120 else 'see above'}).",
        "An operando sample is a whole ramp of frames; microscopy includes building the",
        "synthetic specimens its frames are cut from.",
        "",
        f"Machine: {machine()}.",
    ]
    print(f"wrote {write_section('generators', lines)}")
    record(
        "generators",
        [
            figure(
                f"INS maps simulated: {args.ins:,}",
                f"{ins_time:.1f} s",
                "10,000 in under 120 s on 2 cores",
                args.ins >= 10_000 and ins_time < 120,
            )
        ],
    )


if __name__ == "__main__":
    main()
