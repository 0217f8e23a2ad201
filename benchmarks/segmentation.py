"""micrograph_unet's throughput: the plugin's path against a bare forward pass of its network.

For each batch size, the same 256 x 256 frames go through ``smartlab_analyze``
(checks, preprocessing, forward, phase map, fractions, results) and through
``net(x)`` of the already preprocessed batch, best of several runs each, one
after the other in this process; the ratio bare time / plugin time is the
figure (target: at least 0.9). Writes its section of docs/benchmarks.md.

    python benchmarks/segmentation.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from smartlab_plugins.models.segmentation import measure_throughput
from smartlab_plugins.models.store import load_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import machine, write_section

BATCH_SIZES = (1, 8, 32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement")
    args = parser.parse_args()
    model = load_model("micrograph_unet")
    rows = measure_throughput(model, BATCH_SIZES, repeats=args.repeats)
    for row in rows:
        print(
            f"batch {row['batch']}: plugin {row['plugin_frames_per_s']:.1f} frames/s, "
            f"bare forward {row['bare_frames_per_s']:.1f} frames/s, ratio {row['ratio']:.2f}",
            flush=True,
        )
    worst = min(row["ratio"] for row in rows)
    lines = [
        "## Segmentation throughput (`benchmarks/segmentation.py`)",
        "",
        "`micrograph_unet` on 256 x 256 frames: the plugin's `smartlab_analyze` (input checks,",
        "preprocessing, forward pass, phase map, area fractions) against a bare `net(x)` of the",
        f"same preprocessed batch on the same device ({model.device}, {torch.get_num_threads()} "
        f"threads), best of {args.repeats} runs each.",
        "",
        "| batch | plugin frames/s | bare forward frames/s | bare time / plugin time |",
        "|---|---|---|---|",
        *(
            f"| {r['batch']} | {r['plugin_frames_per_s']:.1f} | {r['bare_frames_per_s']:.1f} | "
            f"**{r['ratio']:.2f}** |"
            for r in rows
        ),
        "",
        f"Target: at least 0.9. Measured: {worst:.2f} at worst "
        f"({'met' if worst >= 0.9 else 'not met'}). A ratio above 1 is no error: the plugin",
        "runs at most 8 frames of 256 x 256 per forward pass (memory stays bounded), and on",
        "these CPUs 8 frames a pass are faster per frame than one pass of the whole batch.",
        "",
        f"Machine: {machine()}.",
    ]
    print(f"wrote {write_section('segmentation', lines)}")


if __name__ == "__main__":
    main()
