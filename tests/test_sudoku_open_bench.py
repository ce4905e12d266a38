"""bench/sudoku_open.py, the generator benchmark, end to end at a tiny size with the bundled models:
its measures are what they say (valid shares, distinct grids within the samples, the rarer
solution at most half), and bad options are one line."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def bench(tmp_path, *args):
    env = {**os.environ, "VMD_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(ROOT / "bench" / "sudoku_open.py"), *args], capture_output=True,
                          text=True, env=env, timeout=600, cwd=tmp_path)


def test_the_generator_bench_measures_valid_distinct_and_rarer(tmp_path):
    out = tmp_path / "open.md"
    r = bench(tmp_path, "--sets", "empty,two", "--puzzles", "2", "--samples", "6", "--nfe", "81", "--out", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    (section,) = json.loads(out.with_suffix(".json").read_text()).values()
    rows = section["samples"]
    for model in ("MDM", "VMD"):  # the 81-step bound is the any-order NLL, the NELBO's value in expectation
        bits = section["bounds"][model]  # (the bundled solvers never saw an empty board: far above 0.895)
        assert 0.895 < bits["0"] and abs(bits["81"] - bits["0"]) < 0.05 * bits["0"], bits
    assert [(row["set"], row["nfe"]) for row in rows] == [("empty", 81), ("two", 81)]
    for row in rows:
        assert 0 <= row["p"] <= 1
        for model in ("MDM", "VMD"):
            (m,) = row[model]  # one seed
            assert 0 <= m["valid"] <= 1 and 0 <= m["distinct"] <= 6
            assert (m["distinct"] > 0) == (m["valid"] > 0)
            if row["set"] == "two":
                assert m["distinct"] <= 2 and (m["rarer"] is None or 0 <= m["rarer"] <= 0.5)
    page = out.read_text()
    assert "| empty | 81 |" in page and "bundled sudoku-vmd" in page and "## The bundled models" in page
    # a second run writes its own section, and the reading by hand stays where it was
    out.write_text(page + "\n## What it shows\n\nread by hand\n")
    r = bench(tmp_path, "--sets", "empty", "--puzzles", "1", "--samples", "2", "--nfe", "1", "--out", str(out),
              "--section", "another pair")
    assert r.returncode == 0, r.stderr[-2000:]
    page = out.read_text()
    assert page.index("## The bundled models") < page.index("## another pair") < page.index("read by hand")
    assert set(json.loads(out.with_suffix(".json").read_text())) == {"The bundled models", "another pair"}


def test_bad_options_are_one_line(tmp_path):
    r = bench(tmp_path, "--sets", "empty,lots")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "--sets of" in r.stderr.strip().splitlines()[-1]


def test_the_sets_are_written_as_files_vmd_solve_reads_and_never_over_a_users(tmp_path):
    from vmd.sudoku.grid import read_puzzles
    from vmd.sudoku.solver import count_solutions

    r = bench(tmp_path, "--write", str(tmp_path / "sets"), "--sets", "empty,two", "--puzzles", "3")
    assert r.returncode == 0, r.stderr[-2000:]
    empty, two = (read_puzzles(str(tmp_path / "sets" / f"open-{s}.txt")) for s in ("empty", "two"))
    assert len(empty) == len(two) == 3 and not any(any(p.grid) for p in empty)
    assert all(count_solutions(list(p.grid), 3) == 2 for p in two)
    mine = tmp_path / "sets" / "open-two.txt"
    mine.write_text("my own\n")
    r = bench(tmp_path, "--write", str(tmp_path / "sets"), "--sets", "two", "--puzzles", "3")
    assert r.returncode == 1 and "already exist" in r.stderr and mine.read_text() == "my own\n"
