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


def test_training_progress_is_a_bar_moving_every_step_on_a_terminal_and_full_lines_in_a_log():
    import io

    from rich.console import Console

    from vmd.train import Progress as Event
    from vmd_cli.progress import TrainProgress

    metrics = {"loss": 300.0, "recon": 290.0, "latent_kl": 0.5, "nelbo": 310.0, "bits_per_token": 3.5}
    ev = Event(step=50, total=1800, metrics=metrics, lr=1e-3, beta=0.9, steps_per_s=1.2, elapsed_s=41.0,
               valid={"valid_bpt": 3.61}, tokens_per_s=4900.0, matmul_share=0.44)
    log = io.StringIO()
    with TrainProgress(Console(file=log, width=80), 0, 1800, latent=True) as p:  # not a terminal
        p.step(1)  # no bar: nothing
        p.update(ev)
    line = log.getvalue().strip()
    assert "\n" not in line and len(line) > 80  # one line, not cut to the terminal's width
    for part in ("step 50/1800", "bpt 3.500", "loss 3.387", "kl 0.500", "valid 3.610", "4.9k tok/s", "44% matmul",
                 "elapsed 0:00:41", "left "):
        assert part in line, (part, line)
    term = io.StringIO()
    with TrainProgress(Console(file=term, width=120, force_terminal=True), 0, 1800) as p:
        for step in range(1, 4):
            p.step(step)
        assert p.bar.tasks[0].completed == 3  # moved every step, before any log line
        p.update(ev)
        assert p.bar.tasks[0].completed == 50 and "kl" not in p.bar.tasks[0].fields["metrics"]  # no latent: no kl
