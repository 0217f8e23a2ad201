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
TRANSFER_TABLE = Path(__file__).resolve().parent / "transfer_table.md"  # kept between runs
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


#: (model, shift) pairs of the transfer table: 50 labelled examples, 400 to test on.
TRANSFER = [
    ("spinwave_cnn", "resolution"),
    ("spinwave_cnn", "background"),
    ("spinwave_cnn", "counting_time"),
    ("phase_cnn", "counting_time"),
    ("phase_cnn", "background"),
    ("phase_cnn", "beam_centre"),
]


def headline(name: str, metrics: dict) -> str:
    """The figure a transfer row compares: relative errors, or accuracy away from boundaries."""
    if name == "spinwave_cnn":
        return " / ".join(f"{100 * metrics[k]['relative_mae']:.1f}" for k in ("j1", "j2", "d"))
    return f"{100 * metrics['accuracy_away_from_boundary']:.1f}"


def transfer_rows() -> list[str]:
    """Unadapted, trained from scratch on the 50 and fine-tuned on them, per (model, shift)."""
    import tempfile
    from dataclasses import asdict

    from smartlab_plugins.cases import simulate_case
    from smartlab_plugins.models.finetune import FINETUNE_CONFIG, finetune, score
    from smartlab_plugins.models.nets import build
    from smartlab_plugins.models.registry import task as task_named
    from smartlab_plugins.models.shifts import apply_overrides, base_config, simulated_split
    from smartlab_plugins.models.training import TrainingConfig, fit, predict, split_by_seed

    rows = [
        "| model | shift | not adapted | from scratch on the 50 | fine-tuned on the 50 "
        "| kept | original domain, before → after |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, shift in TRANSFER:
        task = task_named(name)
        config = apply_overrides(base_config(name), SHIFTS[name][shift].overrides)
        test = simulated_split(name, config, 400, 502)
        small = simulate_case(task.case, 50, seed=501, config=config, progress=False)
        train, val, _ = split_by_seed(task.from_set(small), FINETUNE_CONFIG.fractions, 0)
        net = build(task.architecture())
        fit(task, net, train, val, TrainingConfig(**asdict(FINETUNE_CONFIG)), progress=False)
        scratch = task.evaluate(predict(net, test.x), test, task.calibrate(net, val))
        with tempfile.TemporaryDirectory() as out:
            card = finetune(name, small, Path(out), progress=False, data_label=shift)
            tuned = score(name, Path(out), test)
        original = card.metrics["original_domain"]
        rows.append(
            f"| {name} | `{shift}` | {headline(name, score(name, None, test))} | "
            f"{headline(name, scratch)} | {headline(name, tuned)} | "
            f"{card.training['adapted'].split(':')[0]} | "
            f"{headline(name, original['before'])} → {headline(name, original['after'])} |"
        )
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=list(SIZES), default=list(SIZES))
    parser.add_argument(
        "--page-only", action="store_true", help="rewrite the page from the cards as they are"
    )
    parser.add_argument("--transfer", action="store_true", help="run the transfer table too")
    args = parser.parse_args()
    if args.transfer:
        TRANSFER_TABLE.write_text("\n".join(transfer_rows()) + "\n")
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
    if TRANSFER_TABLE.is_file():
        parts += [
            "\n## Transfer: 50 labelled examples of the shifted instrument\n",
            "`smartlab finetune` on 50 simulated examples of each shift (seed 501), scored on",
            "400 more (seed 502); beside it, the shipped model not adapted and the same network",
            "trained from scratch on the 50. spinwave_cnn: relative error of J1 / J2 / D (%);",
            "phase_cnn: accuracy away from the phase boundaries (%). *kept*: the way of adapting",
            "that `smartlab finetune` chose by 3-fold cross-validation on the 50 (`none`: the",
            "shipped weights, recalibrated; `head`: the dense head alone, at a learning rate of",
            "1e-3; `all`: every layer, at 3e-4). The last",
            "column is the model card's `original_domain`: the shipped instrument's own data,",
            "scored before and after.\n",
            TRANSFER_TABLE.read_text(),
            "Fine-tuning beats training from scratch on the same 50 in every row.",
            "spinwave_cnn reaches 10 % or better per constant after a",
            "resolution or counting-time change, not quite after a background change (D). The",
            "tuned model is for the new instrument only: on the original one it is far worse,",
            "so keep the shipped model for that. phase_cnn does not reach 95 % at a tenth of the",
            "counting time, and on the miscentred beam adapting makes it worse than not",
            "adapting: the beam centre moves from frame to frame, so 50 frames teach no one",
            "shift. Choosing among the three ways by cross-validation on 50 examples is",
            "noisy; the card records each one's score.",
        ]
    PAGE.write_text(head + "\n".join(parts) + "\n")


if __name__ == "__main__":
    main()
