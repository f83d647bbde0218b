"""Where a benchmark script writes: a folder git ignores, unless ``--update`` asks for the tracked one.

benchmarks/results/ (and docs/img/ for the pictures README shows) hold the figures BENCHMARKS.md
and README quote. A quick look, a run on another machine or under another load must not
overwrite them by accident, so every script writes to ``runs/bench/NAME/`` (git ignores
``runs/``) or the folder ``--out`` names; ``--update`` writes the tracked files instead.

    parser = argparse.ArgumentParser(...)
    outdir.add_options(parser, "denoise")
    args = parser.parse_args()
    folder = outdir.folder(args, "denoise")      # created if needed
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: The tracked results BENCHMARKS.md quotes.
RESULTS = ROOT / "benchmarks" / "results"
#: The tracked pictures README shows.
PICTURES = ROOT / "docs" / "img"
#: Untracked results: one folder per script below it.
SCRATCH = ROOT / "runs" / "bench"


def add_options(parser: argparse.ArgumentParser, name: str) -> None:
    """``--out DIR`` and ``--update`` for the script ``name``."""
    parser.add_argument("--out", type=Path, default=None,
                        help=f"folder for the results (default: runs/bench/{name}/, which git ignores)")
    parser.add_argument("--update", action="store_true",
                        help="write the tracked results instead: benchmarks/results/ (and docs/img/ for pictures "
                             "README shows), the figures BENCHMARKS.md quotes")


def folder(args: argparse.Namespace, name: str) -> Path:
    """The folder this run writes its results to, created: benchmarks/results/ with ``--update``,
    else ``--out``, else runs/bench/NAME/. Giving both ``--update`` and ``--out`` is an error."""
    if args.update and args.out is not None:
        print("--update writes benchmarks/results/; it does not go with --out", file=sys.stderr)
        raise SystemExit(2)  # a usage error, like argparse's own
    path = RESULTS if args.update else args.out if args.out is not None else SCRATCH / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def picture_folder(args: argparse.Namespace, name: str) -> Path:
    """Where a picture README shows goes: docs/img/ with ``--update``, else beside the results."""
    return PICTURES if args.update else folder(args, name)
