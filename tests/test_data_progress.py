"""What a task's data making says on screen: `prepare(progress)` with `progress(done, total, label)`."""

import io

from rich.console import Console
from typer.testing import CliRunner

from vmd import config as C
from vmd.tasks import make_task
from vmd_cli.main import app
from vmd_cli.progress import DataProgress


def test_data_progress_prints_each_label_once_and_a_bar_only_while_there_is_work():
    sink = io.StringIO()
    with DataProgress(Console(file=sink, width=300)) as dp:
        dp.update(3, 3, "using cached 3 things: /c/x")
        assert dp.bar is None  # nothing to wait for
        for done in (0, 2, 4):
            dp.update(done, 4, "generating 4 things -> /c/y")
        assert dp.bar is not None
    lines = sink.getvalue().splitlines()
    assert lines.count("using cached 3 things: /c/x") == 1 and lines.count("generating 4 things -> /c/y") == 1


def test_a_sudoku_task_says_what_it_makes_and_where_and_then_that_it_uses_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VMD_CACHE_DIR", str(tmp_path))
    cfg = C.from_dict({"task": {"name": "sudoku", "source": "puzzles", "grids": 60, "min_givens": 30,
                                "max_givens": 36}}).task
    calls = []
    make_task(cfg).prepare(lambda *a: calls.append(a))
    (path,) = (tmp_path / "sudoku").glob("*.safetensors")
    assert calls[0] == (0, 60, f"generating 60 Sudoku puzzles (30-36 givens) -> {path}")
    assert [c[0] for c in calls] == [0, 50, 60] and all(c[1] == 60 for c in calls)
    calls.clear()
    make_task(cfg).prepare(lambda *a: calls.append(a))
    assert calls == [(60, 60, f"using cached 60 Sudoku puzzles (30-36 givens): {path}")]
    make_task(C.from_dict({"task": {"name": "synthetic"}}).task).prepare(lambda *a: calls.append(a))  # nothing to make
    assert len(calls) == 1


def test_vmd_train_shows_what_data_it_makes(tmp_path, monkeypatch):
    monkeypatch.setenv("VMD_CACHE_DIR", str(tmp_path / "cache"))
    r = CliRunner().invoke(app, ["train", "--preset", "sudoku-mdm-tiny", "--out", str(tmp_path / "run"),
                                 "--set", "task.grids=40", "--set", "train.steps=1", "--set", "model.dim=32",
                                 "--set", "model.layers=1", "--set", "device.device=cpu"])
    assert r.exit_code == 0, r.output
    assert "generating 40 Sudoku puzzles" in r.stderr and str(tmp_path / "cache" / "sudoku") in r.stderr
