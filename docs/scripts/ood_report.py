"""Score each shipped model on its shifted instruments; write the cards' tables and the page.

    python docs/scripts/ood_report.py [--models NAME ...]

For each model and each shift of ``smartlab_plugins.models.shifts.SHIFTS``,
:func:`~smartlab_plugins.models.shifts.evaluate_shift` on new seeds (the same
as ``smartlab evaluate MODEL --shift NAME`` with the default seed); the
summaries go into the card (``extras["ood"]["evaluation"]``, so the card holds
its own table) and into docs/models/ood.md.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from smartlab_plugins.models.evaluate import SEED_OFFSET
from smartlab_plugins.models.shifts import SHIFTS, evaluate_shift
from smartlab_plugins.models.store import load_model, shipped_dir

PAGE = Path(__file__).resolve().parents[1] / "models" / "ood.md"
SIZES = {"spinwave_cnn": 500, "phase_cnn": 500, "transition_lstm": 300, "micrograph_unet": 150}
UNITS = {
    "spinwave_cnn": "maps",
    "phase_cnn": "frames",
    "transition_lstm": "ramps (64 frames each, scored per frame)",
    "micrograph_unet": "128 x 128 crops",
}


def summary(report: dict) -> dict:
    """What the card and the page keep of one shift's report."""
    if "refused" in report:
        return {"description": report["description"], "refused": report["refused"]}
    honesty = {
        which: {key: value for key, value in checks.items()}
        for which, checks in report["honesty"].items()
    }
    return {
        "description": report["description"],
        "n": report["n"],
        "ood": report["ood"],
        "honesty": honesty,
    }


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def honesty_cell(checks: dict, which: str) -> str:
    """The honesty checks of one set: all events / those left unflagged."""
    cells = []
    for key, value in checks.items():
        label = key.replace("in_68_interval_", "in 68 % ").replace(
            "confident_wrong", "confident wrong"
        )
        cells.append(f"{label}: {percent(value['all'])} / {percent(value[which])}")
    return "<br>".join(cells)


def cell(text: str) -> str:
    """Text for a Markdown table cell: pipes escaped, a list of frame indices shortened."""
    return re.sub(r"\[[\d, ]+\]", "(each)", text).replace("|", "\\|")


def model_table(name: str, evaluation: dict) -> list[str]:
    rows = [
        "| shift | what changes | OOD AUROC | flagged | honesty: all / unflagged |",
        "|---|---|---|---|---|",
    ]
    reference = None
    for shift, result in evaluation.items():
        if "refused" in result:
            rows.append(
                f"| `{shift}` | {cell(result['description'])} | refused | 100 % | "
                f"per-event error: {cell(result['refused'])} |"
            )
            continue
        reference = reference or result
        rows.append(
            f"| `{shift}` | {cell(result['description'])} | {result['ood']['auroc']:.3f} | "
            f"{percent(result['ood']['flagged_shifted_set'])} | "
            f"{honesty_cell(result['honesty']['shifted_set'], 'unflagged')} |"
        )
    if reference is not None:
        rows.insert(
            2,
            f"| (in distribution) | the training generator, new seed | - | "
            f"{percent(reference['ood']['flagged_in_distribution_set'])} | "
            f"{honesty_cell(reference['honesty']['in_distribution_set'], 'unflagged')} |",
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=list(SIZES), default=list(SIZES))
    parser.add_argument(
        "--page-only", action="store_true", help="rewrite the page from the cards as they are"
    )
    args = parser.parse_args()
    for name in [] if args.page_only else args.models:
        model = load_model(name, device="cpu")
        seed = model.card.data["generator_seed"] + SEED_OFFSET
        evaluation = {}
        for shift in SHIFTS[name]:
            evaluation[shift] = summary(evaluate_shift(name, shift, SIZES[name], seed, model))
            print(name, shift, json.dumps(evaluation[shift].get("ood", "refused")))
        card = model.card
        card.extras["ood"]["evaluation"] = {"n": SIZES[name], "seed": seed, "shifts": evaluation}
        card.save(shipped_dir() / f"{name}.json")
    write_page()


def write_page() -> None:
    """docs/models/ood.md from the cards' evaluations."""
    from smartlab_plugins.models.store import card_of

    text = PAGE.read_text()
    marker = "<!-- tables: written by docs/scripts/ood_report.py -->"
    head = text.split(marker)[0] + marker + "\n"
    parts = []
    for name in SIZES:
        entry = card_of(name).extras.get("ood", {})
        evaluation = entry.get("evaluation")
        if not evaluation:
            continue
        parts += [
            f"\n### {name}\n",
            f"{evaluation['n']} {UNITS[name]} per set, seed {evaluation['seed']} (the shifted set "
            f"seed + 1); threshold {entry['threshold']:.3g} (the {entry['quantile']:.0%} quantile "
            f"of {entry['n_threshold']} held-out inputs; calibrated on {entry['data']}).\n",
            *model_table(name, evaluation["shifts"]),
        ]
    PAGE.write_text(head + "\n".join(parts) + "\n")


if __name__ == "__main__":
    main()
