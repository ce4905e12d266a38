"""Sudoku grids: one reader for the formats people have, the rules, and plain writers.

A grid is a tuple of 81 ints, row by row, 0 for a blank and 1-9 for a digit. Read:

- 81-character lines, one puzzle per line (``.sdm``); ``.``, ``0``, ``_``, ``*`` or ``X``
  mark blanks; a second 81-character field on the line is taken as the solution;
- 9x9 grids (``.sdk``), ``#`` lines are comments, blank lines separate grids;
- grids drawn with box borders (``.ss``): ``|`` and ``+`` inside rows are dropped, and rows
  made only of border characters (``-``, ``=``, ``+``, ``*``, ``|``) are skipped;
- CSV with a header naming the puzzle column (``quizzes``, ``puzzle``, ``puzzles``, ``quiz``)
  and optionally the solution column (``solutions``, ``solution``), as Kaggle's sets have.

Every error names the source, the line and the reason. Files and stdin are read as UTF-8 (a
byte-order mark is dropped) one line at a time, and a line longer than ``MAX_LINE`` is refused
as soon as it is seen, so a huge or binary file costs neither time nor memory.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, TextIO

import torch

from vmd.runtime.errors import DataError

BLANKS = frozenset(".0_*Xx")
BORDER = frozenset("-=+*|")
PUZZLE_COLUMNS = ("quizzes", "puzzle", "puzzles", "quiz")
SOLUTION_COLUMNS = ("solutions", "solution")
# The longest line read: a CSV row of puzzle, solution and a few more columns is well under it.
MAX_LINE = 1024

# The 27 units (9 rows, 9 columns, 9 boxes) as lists of cell indices.
ROWS = [[r * 9 + c for c in range(9)] for r in range(9)]
COLS = [[r * 9 + c for r in range(9)] for c in range(9)]
BOXES = [[(br * 3 + r) * 9 + bc * 3 + c for r in range(3) for c in range(3)] for br in range(3) for bc in range(3)]
UNITS = ROWS + COLS + BOXES
UNIT_NAMES = [f"row {i + 1}" for i in range(9)] + [f"column {i + 1}" for i in range(9)] + [f"box {i + 1}" for i in range(9)]


@dataclass(frozen=True)
class Puzzle:
    grid: tuple[int, ...]
    solution: tuple[int, ...] | None = None
    source: str = ""  # "file:line", for messages

    @property
    def givens(self) -> int:
        return sum(1 for v in self.grid if v)


def conflicts(grid) -> set[int]:
    """Cells whose digit repeats in some row, column or box."""
    bad: set[int] = set()
    for unit in UNITS:
        seen: dict[int, int] = {}
        for i in unit:
            v = grid[i]
            if v:
                if v in seen:
                    bad.update((i, seen[v]))
                seen[v] = i
    return bad


def first_conflict(grid) -> str | None:
    """A sentence naming the first broken rule, or None."""
    for unit, name in zip(UNITS, UNIT_NAMES):
        digits = [grid[i] for i in unit if grid[i]]
        for v in set(digits):
            if digits.count(v) > 1:
                return f"two {v}s in {name}"
    return None


def is_solved(grid, puzzle) -> bool:
    """Complete, every row, column and box a permutation of 1-9, and every given kept."""
    if len(grid) != 81 or any(not 1 <= v <= 9 for v in grid):
        return False
    if any(p and p != g for p, g in zip(puzzle, grid)):
        return False
    return all(len({grid[i] for i in unit}) == 9 for unit in UNITS)


def to_line(grid) -> str:
    return "".join(str(v) if v else "." for v in grid)


def to_json(puzzle: Puzzle, result=None, solved: bool | None = None) -> str:
    """One JSON object: ``puzzle``; with a result also ``solved`` and ``solution``, which is null when
    the result is not a solution (the filled grid is then under ``attempt``), so no reader takes it
    for one. ``solved`` is checked here when not given."""
    out = {"puzzle": to_line(puzzle.grid)}
    if result is not None:
        solved = is_solved(result, puzzle.grid) if solved is None else bool(solved)
        out["solved"] = solved
        out["solution"] = to_line(result) if solved else None
        if not solved:
            out["attempt"] = to_line(result)
    return json.dumps(out)


def _cells(text: str, where: str) -> tuple[int, ...]:
    out = []
    for col, ch in enumerate(text, 1):
        if ch in BLANKS:
            out.append(0)
        elif "1" <= ch <= "9":
            out.append(int(ch))
        else:
            raise DataError(f"{where}: bad character {ch!r} at position {col} (digits 1-9, or . 0 _ * X for blanks)")
    return tuple(out)


def _checked(grid, solution, where: str) -> Puzzle:
    clash = first_conflict(grid)
    if clash:
        raise DataError(f"{where}: givens conflict ({clash})")
    if solution is not None and not is_solved(solution, grid):
        raise DataError(f"{where}: the solution given does not solve the puzzle")
    return Puzzle(grid, solution, where)


def _read_csv(lines: Iterable[str], name: str) -> list[Puzzle]:
    rows = csv.reader(lines)
    header = [h.strip().lower() for h in next(row for row in rows if row)]
    col = next((header.index(c) for c in PUZZLE_COLUMNS if c in header), None)
    if col is None:
        raise DataError(f"{name}:1: CSV header has no puzzle column (one of {', '.join(PUZZLE_COLUMNS)})")
    sol = next((header.index(c) for c in SOLUTION_COLUMNS if c in header), None)
    out = []
    try:
        for row in rows:
            if not row or not "".join(row).strip():
                continue
            where = f"{name}:{rows.line_num}"
            if len(row) <= max(col, sol or 0):
                raise DataError(f"{where}: {len(row)} fields, the header has {len(header)}")
            cells = row[col].strip()
            if len(cells) != 81:
                raise DataError(f"{where}: puzzle has {len(cells)} cells, expected 81")
            solution = _cells(row[sol].strip(), where) if sol is not None and row[sol].strip() else None
            if solution is not None and len(solution) != 81:
                raise DataError(f"{where}: solution has {len(solution)} cells, expected 81")
            out.append(_checked(_cells(cells, where), solution, where))
    except csv.Error as e:
        raise DataError(f"{name}:{rows.line_num}: bad CSV ({e})") from None
    return out


def _is_csv(first: str) -> bool:
    return any(c in [h.strip().lower() for h in first.split(",")] for c in PUZZLE_COLUMNS)


def parse(text: str, name: str = "<input>") -> list[Puzzle]:
    """Every puzzle in ``text``; raises DataError naming ``name``, the line and the reason."""
    return parse_lines(text.splitlines(), name)


def parse_lines(lines: Iterable[str], name: str = "<input>") -> list[Puzzle]:
    """Every puzzle in an iterable of lines (read one at a time, so a stream is never held whole)."""
    lines = iter(lines)
    blank, first = 0, ""
    for first in lines:  # the first non-blank line tells CSV from the grid formats
        if first.strip():
            break
        blank += 1
    lines = itertools.chain(itertools.repeat("", blank), [first] if first.strip() else [], lines)
    if _is_csv(first):
        return _read_csv(lines, name)
    out: list[Puzzle] = []
    rows: list[tuple[int, ...]] = []
    start = 0
    for n, raw in enumerate(lines, 1):
        line = raw.strip()
        if line.startswith("#") or (not line and not rows):
            continue
        where = f"{name}:{n}"
        if not line:
            raise DataError(f"{name}:{start}: grid has {len(rows)} rows, expected 9")
        fields = line.split()
        if len(fields[0]) == 81:  # one puzzle per line; a second 81-cell field is its solution, the rest is ignored
            if rows:
                raise DataError(f"{where}: an 81-cell line inside a grid that started on line {start}")
            solution = _cells(fields[1], where) if len(fields) > 1 and len(fields[1]) == 81 else None
            out.append(_checked(_cells(fields[0], where), solution, where))
            continue
        compact = "".join(ch for ch in line if not ch.isspace())
        if set(compact) <= BORDER and set(compact) & set("-="):
            continue  # a drawn border
        cells = "".join(ch for ch in compact if ch not in "|+")
        if len(cells) != 9:
            expected = (f"9 (row {len(rows) + 1} of the grid that starts on line {start})" if rows
                        else "81 (one puzzle per line) or 9 (a row of a grid)")
            raise DataError(f"{where}: {len(cells)} cells, expected {expected}")
        if not rows:
            start = n
        rows.append(_cells(cells, where))
        if len(rows) == 9:
            out.append(_checked(sum(rows, ()), None, f"{name}:{start}"))
            rows = []
    if rows:
        raise DataError(f"{name}:{start}: grid has {len(rows)} rows, expected 9")
    return out


def _bounded_lines(stream: TextIO, name: str, seen: list[int]) -> Iterator[str]:
    """The lines of ``stream``, each read with a bound: a line longer than any format has is an
    error at once, not after reading it whole. A leading byte-order mark is dropped; ``seen[0]``
    counts the lines read."""
    while True:
        line = stream.readline(MAX_LINE + 1)
        if not line:
            return
        seen[0] += 1
        if seen[0] == 1:
            line = line.removeprefix("\ufeff")
        if len(line.rstrip("\r\n")) > MAX_LINE:
            raise DataError(f"{name}:{seen[0]}: line longer than {MAX_LINE} characters (no puzzle format has lines "
                            "that long)")
        yield line


def _read_stream(stream: TextIO, name: str) -> list[Puzzle]:
    seen = [0]
    try:
        puzzles = parse_lines(_bounded_lines(stream, name, seen), name)
    except UnicodeDecodeError as e:
        raise DataError(f"{name}: not a text file ({e.reason})") from None
    if not puzzles:
        raise DataError(f"{name}: is empty: no puzzles" if seen[0] == 0 else f"{name}: no puzzles found")
    return puzzles


def read_puzzles(path: str | Path) -> list[Puzzle]:
    """Read a puzzle file (``-`` is stdin) line by line as UTF-8; at least one puzzle, or a DataError.

    A directory or an empty file is named as such; a pipe or device is read like a file."""
    if str(path) == "-":
        if not hasattr(sys.stdin, "buffer"):  # a text stream with no bytes under it (tests, embedding)
            return _read_stream(sys.stdin, "<stdin>")
        stream = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8-sig")
        try:
            return _read_stream(stream, "<stdin>")
        finally:
            stream.detach()  # leave the process's stdin open
    p = Path(path)
    if p.is_dir():
        raise DataError(f"{path}: is a directory, not a puzzle file")
    if not p.exists():
        raise DataError(f"{path}: no such file")
    try:
        with open(p, encoding="utf-8-sig") as stream:
            return _read_stream(stream, str(path))
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror or e})") from None


def solved_mask(grids: torch.Tensor, puzzles: torch.Tensor) -> torch.Tensor:
    """(n,) bool: complete, every row, column and box holds 1-9 once, every given kept."""
    g = grids.long()
    complete = ((g >= 1) & (g <= 9)).all(1)
    p = puzzles.long().to(g.device)
    kept = ((p == 0) | (p == g)).all(1)
    units = g[:, torch.tensor(UNITS, device=g.device)]  # (n, 27, 9)
    one_hot = torch.nn.functional.one_hot((units - 1).clamp(0, 8), 9).sum(2)  # (n, 27, 9) counts
    return complete & kept & (one_hot == 1).all(2).all(1)
