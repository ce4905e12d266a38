"""vmd plot: training curves of several runs as a PNG, --last as a table; bad input is one line and a
file vmd plot did not write is never replaced."""

import json
import subprocess
import sys

from typer.testing import CliRunner


def vmd(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "vmd_cli", *map(str, args)], capture_output=True, text=True, **kwargs)


def fake_run(path, bpt0, latent):
    path.mkdir()
    rows = [{"step": s, "steps": 10, "loss": 1.0, "bits_per_token": bpt0 / s ** 0.2, "latent_kl": 0.5 if latent else 0.0,
             "tokens_per_s": 1000.0 + s, "elapsed_s": s / 10, **({"valid_bpt": bpt0 / s ** 0.2 + 0.1} if s % 20 == 0 else {})}
            for s in range(10, 110, 10)]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"torn": ')
    return path


def test_plot_overlays_runs_in_a_png_and_last_prints_each_run_s_newest_line(tmp_path):
    a, b = fake_run(tmp_path / "bd3", 4.0, False), fake_run(tmp_path / "vmd", 3.5, True)
    png = tmp_path / "curves.png"
    r = vmd("plot", a, b, "--out", png)
    assert r.returncode == 0, r.stderr
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000 and b"vmd plot" in data[:4096]
    assert "latent KL" in " ".join(r.stdout.split()) and "validation bound" in " ".join(r.stdout.split())
    assert vmd("plot", a, b, "--out", png).returncode == 0  # its own file: replaced
    one = vmd("plot", a)
    assert one.returncode == 0 and (a / "curves.png").exists()  # one run: beside its metrics
    last = vmd("plot", a, b, "--last")
    assert last.returncode == 0 and "bd3" in last.stdout and "vmd" in last.stdout and "100" in last.stdout


def test_bad_input_is_one_line_and_a_file_it_did_not_write_stays(tmp_path):
    mine = tmp_path / "mine.png"
    mine.write_bytes(b"my picture")
    run = fake_run(tmp_path / "run", 4.0, False)
    for args, words in [((run, "--out", mine), "was not written by vmd plot"),
                        ((tmp_path / "nope",), "is not a run directory"),
                        ((tmp_path,), "has no training history")]:
        r = vmd("plot", *args)
        assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert mine.read_bytes() == b"my picture"


def test_without_matplotlib_the_hint_names_the_extra(tmp_path, monkeypatch):
    from vmd_cli.main import app

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as if it were not installed
    r = CliRunner().invoke(app, ["plot", str(fake_run(tmp_path / "run", 4.0, False)), "--out", str(tmp_path / "c.png")])
    assert r.exit_code == 2 and "pip install 'vmd[plot]'" in r.output
