"""Print the README's "supported models" table from the conformance zoo (tests/conformance/zoo.py).

Runs every cell of the matrix the test suite checks (same models, same functions, same
documented limits) and prints one Markdown table: rows are models, columns mechanisms; a cell
is "yes" when the mechanism works with the right value, "limit N" for a documented limit
(footnote N gives the reason) and "FAILS N" for anything else (footnote N gives the error).

Usage:
    PYTHONPATH=. .venv/bin/python benchmarks/support_matrix.py [--models a,b] [--cells c,d]
"""

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from conformance import zoo  # noqa: E402


def support_matrix(models=zoo.MODELS, cells=tuple(zoo.CELLS)):
    """``(rows, notes)``: per model the cell labels, and the footnote texts in order."""
    notes, rows = [], []

    def note(text):
        if text not in notes:
            notes.append(text)
        return notes.index(text) + 1

    for name in models:
        row = []
        for cell in cells:
            try:
                zoo.CELLS[cell](name)
                row.append("yes")
            except Exception as err:  # every outcome becomes a table entry
                line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                limit = zoo.limit_for(name, cell)
                if limit is not None and isinstance(err, limit[0]):
                    row.append(f"limit {note(limit[2])}")
                else:
                    row.append(f"FAILS {note(f'{type(err).__name__}: {line[:160]}')}")
        rows.append((name, row))
    return rows, notes


def markdown(rows, notes, cells):
    lines = ["| model | " + " | ".join(cells) + " |", "|---" * (len(cells) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(row) + " |" for name, row in rows]
    lines += [""] + [f"{i}. {text}" for i, text in enumerate(notes, 1)]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(zoo.MODELS))
    parser.add_argument("--cells", default=",".join(zoo.CELLS))
    args = parser.parse_args()
    cells = args.cells.split(",")
    start = time.time()
    rows, notes = support_matrix(args.models.split(","), cells)
    print(markdown(rows, notes, cells))
    print(f"\n(produced by `python benchmarks/support_matrix.py` in {time.time() - start:.0f} s)")
    zoo.clear()


if __name__ == "__main__":
    main()
