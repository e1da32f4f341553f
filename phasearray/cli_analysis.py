"""``phasearray plot`` and ``phasearray phases``: figures and labels of a store.

:func:`register` adds both subcommands to the ``phasearray`` parser. Each
handler returns the exit code: 0 on success, 2 on bad input (a missing or
unreadable store, a bad option), with the message on stderr.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from .errors import PhasearrayError

__all__ = ["register"]

EXIT_OK, EXIT_BAD_INPUT = 0, 2
_LETTERS = {0: "O", 1: "H", 2: "J"}


def register(subparsers: Any) -> None:
    """Add the ``plot`` and ``phases`` subcommands to ``subparsers``."""
    _add_plot(subparsers)
    _add_phases(subparsers)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("store", type=Path, help="a store made by phasearray run")
    parser.add_argument(
        "--convention",
        choices=("paper", "phase_ml"),
        default="paper",
        help="DBM definitions: the paper's (training set, default) or the "
        "authors' notebook (test set)",
    )


# --- plot ------------------------------------------------------------------------------


def _add_plot(subparsers: Any) -> None:
    plot = subparsers.add_parser(
        "plot",
        help="write the figures of a store as PNG files",
        description="Write the phase-diagram figures of STORE and print their paths.",
    )
    _common(plot)
    plot.add_argument(
        "--out", type=Path, help="folder for the figures; default <store>-figures"
    )
    plot.add_argument(
        "--figure",
        dest="figures",
        action="append",
        metavar="NAME",
        help="draw only this figure (repeatable), e.g. fig9_summary",
    )
    plot.set_defaults(handler=plot_command)


def plot_command(args: argparse.Namespace) -> int:
    """Write the figures; print one path per line.

    A study folder gets the figures that compare its variants; a store also
    gets the one-particle figure and, with a Lyapunov exponent, the chaos one.
    """
    from .plots import write_figures
    from .plots.beyond import has_beyond_figures, write_beyond_figures

    folder = args.out or default_figure_folder(args.store)
    try:
        if (Path(args.store) / "study.yaml").is_file():
            paths = write_beyond_figures(args.store, folder, convention=args.convention)
        else:
            ds = _open(args.store)
            paths = write_figures(
                ds, folder, figures=args.figures, convention=args.convention
            )
            if has_beyond_figures(ds) and not args.figures:
                paths += write_beyond_figures(ds, folder, convention=args.convention)
    except (PhasearrayError, OSError) as error:
        return _fail(error)
    for path in paths:
        print(path)
    return EXIT_OK


def default_figure_folder(store: Path) -> Path:
    """``<store parent>/<store stem>-figures``."""
    store = Path(store)
    return store.parent / f"{store.stem}-figures"


# --- phases ----------------------------------------------------------------------------


def _add_phases(subparsers: Any) -> None:
    phases = subparsers.add_parser(
        "phases",
        help="print the phase of every cell and the recommended temperature",
        description="Label every (T, sigma_W) cell of STORE ordered (O), hot (H) or "
        "jammed (J) by the DBM/sigma_c rule and by the observables, and print the "
        "largest ordered T per sigma_W.",
    )
    _common(phases)
    phases.add_argument(
        "--level",
        type=float,
        default=0.68,
        help="converged fraction marking the hot boundary (default 0.68)",
    )
    phases.add_argument(
        "--jamming",
        choices=("data", "theory"),
        default="data",
        help="jamming line from the measured pre-activations or at 1/sigma_W = sqrt 2",
    )
    phases.add_argument(
        "--batch-size",
        type=int,
        help="batch size for the recommended learning rate; default the store's",
    )
    phases.add_argument(
        "--rule",
        choices=("dbm", "observables"),
        default="dbm",
        help="labels the recommendation uses: the DBM criterion (the paper's; it "
        "needs training run to convergence) or the observables (loss, G, alignment)",
    )
    phases.set_defaults(handler=phases_command)


def phases_command(args: argparse.Namespace) -> int:
    """Print the label grids, where the rules disagree, and the recommendation."""
    from .analysis import compute, recommend

    try:
        ds = _open(args.store)
        labels = ds.phase.classify(
            level=args.level, jamming=args.jamming, convention=args.convention
        )
        advice = recommend(ds, args.batch_size, rule=args.rule, labels=labels)
        labels, advice = compute(labels, advice)
    except (PhasearrayError, OSError) as error:
        return _fail(error)
    print(format_labels(labels))
    print()
    print(format_recommendation(advice))
    return EXIT_OK


def format_labels(labels: Any) -> str:
    """Both label grids, T down the rows (highest first), 1/σ_W across."""
    inverse = 1 / labels["sigma_W"].values
    order = np.argsort(inverse)
    header = "T \\ 1/sigma_W " + " ".join(f"{v:>7.3g}" for v in inverse[order])
    lines = ["O ordered, H hot, J jammed; * where the two rules disagree", ""]
    for name, title in (
        ("label_dbm", "DBM + sigma_c rule"),
        ("label_observables", "observable rule"),
    ):
        grid = labels[name].transpose("T", "sigma_W").values[:, order]
        disagree = labels["disagree"].transpose("T", "sigma_W").values[:, order]
        lines += [title, header]
        for i in range(grid.shape[0] - 1, -1, -1):
            cells = [
                f"{_LETTERS[int(c)] + ('*' if d else ''):>7}"
                for c, d in zip(grid[i], disagree[i], strict=True)
            ]
            lines.append(f"{float(labels['T'][i]):>13.4g} " + " ".join(cells))
        lines.append("")
    count = int(labels["disagree"].sum())
    lines.append(f"the rules disagree in {count} of {labels['disagree'].size} cells")
    return "\n".join(lines)


def format_recommendation(advice: Any) -> str:
    """Per σ_W, the largest ordered T and its learning rate."""
    batch = advice.attrs.get("batch_size")
    lines = [
        f"largest ordered T per sigma_W (batch size {batch}, rule {advice.attrs['rule']})",
        f"{'sigma_W':>10} {'1/sigma_W':>10} {'T_max':>10} {'learning_rate':>14}",
    ]
    for sigma, T, rate in zip(
        advice["sigma_W"].values,
        advice["T_max"].values,
        advice["learning_rate"].values,
        strict=True,
    ):
        T_text = f"{T:>10.4g}" if np.isfinite(T) else f"{'none':>10}"
        rate_text = f"{rate:>14.4g}" if np.isfinite(rate) else f"{'-':>14}"
        lines.append(f"{sigma:>10.4g} {1 / sigma:>10.4g} {T_text} {rate_text}")
    return "\n".join(lines)


# --- shared ------------------------------------------------------------------------------


def _open(path: Path) -> Any:
    import phasearray.analysis  # noqa: F401  (registers ds.phase)

    from .store import check_sound, open_sweep

    if Path(path).is_dir():
        check_sound(path)  # names damage; a missing chunk would read as NaN
    ds = open_sweep(path)
    if "done" in ds.data_vars:
        finished = ds["done"].isel(t=-1).values  # a small boolean read
        if not finished.all():
            print(
                f"phasearray: warning: store {str(path)!r} is incomplete "
                f"({int(finished.sum())} of {finished.size} models done): models "
                "not yet at the last checkpoint show as NaN; run the same "
                "'phasearray run' command again to finish it",
                file=sys.stderr,
            )
    return ds


def _fail(error: Exception) -> int:
    print(f"phasearray: error: {error}", file=sys.stderr)
    return EXIT_BAD_INPUT
