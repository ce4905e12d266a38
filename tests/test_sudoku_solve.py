"""Sudoku end to end: the task, training a tiny model in the test, vmd solve and vmd eval."""

import json
import random

import pytest
import torch
from typer.testing import CliRunner

from vmd import config as C
from vmd.diffusion import mask_tokens
from vmd.model import build_model
from vmd.schedule import make_schedule
from vmd.sudoku.grid import parse, to_line
from vmd.sudoku.grid import solved_mask
from vmd.sudoku.solve import default_batch_size, solve
from vmd.sudoku.solver import make_puzzle
from vmd.tasks import make_task
from vmd.tasks.sudoku import sudoku_layout, to_digits, to_tokens
from vmd.train import Trainer
from vmd_cli.main import app

runner = CliRunner()


def sudoku_cfg(method="mdm", steps=300, **task):
    data = {"method": method, "task": {"name": "sudoku", "grids": 200, **task},
            "model": {"dim": 64, "layers": 2, "heads": 4},
            "latent": {"dim": 8, "encoder_dim": 32, "encoder_layers": 0, "prior": "conditional", "components": 4,
                       "prior_dim": 32, "prior_layers": 0, "beta": 0.1},
            "train": {"steps": steps, "batch_size": 64, "lr": 2e-3, "warmup_steps": 20, "log_every": 50,
                      "checkpoint_every": 1000},
            "sample": {"temperature": 0.0, "strategy": "top-margin"}, "device": {"device": "cpu"}}
    return C.from_dict(data)


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("VMD_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("VMD_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
    run_dir = tmp_path_factory.mktemp("runs") / "sudoku-mdm"
    Trainer.create(sudoku_cfg(), run_dir).run()
    mp.undo()
    return run_dir


@pytest.fixture(scope="module")
def easy_file(tmp_path_factory):
    """Puzzles with few blanks: what a model trained for seconds can fill."""
    rng = random.Random(7)
    pairs = [make_puzzle(rng, 70, 76) for _ in range(12)]
    path = tmp_path_factory.mktemp("puzzles") / "easy.txt"
    path.write_text("".join(to_line(p) + "\n" for p, _ in pairs))
    return path


def test_layout_gives_each_cell_its_row_column_and_box():
    lay = sudoku_layout()
    assert lay.shape == (81, 3)
    assert lay[0].tolist() == [0, 9, 18] and lay[80].tolist() == [8, 17, 26] and lay[30].tolist() == [3, 12, 22]


def test_relation_bias_lets_attention_see_only_a_cells_peers():
    """Relation ids are the layout features two cells share, as bits (row 1, column 2, box 4);
    a head whose bias shuts out unrelated pairs makes a cell blind to cells outside its units."""
    from vmd.model.transformer import Trunk

    torch.manual_seed(0)
    trunk = Trunk(10, 81, 32, 1, 4, layout=sudoku_layout(), relation_bias=True).eval()
    rel = trunk.relation
    assert rel[0, 0] == 7 and rel[0, 1] == 1 + 4 and rel[0, 9] == 2 + 4 and rel[0, 3] == 1 and rel[0, 80] == 0
    assert torch.equal(rel, rel.T)
    x = torch.randint(0, 9, (2, 81))
    y = x.clone()
    y[:, 80] = (y[:, 80] + 1) % 9  # cell 80 shares no row, column or box with cell 0 (but does with cell 8)
    with torch.no_grad():
        assert not torch.allclose(trunk(x)[:, 0], trunk(y)[:, 0])  # zero bias: attention reaches every cell
        trunk.relation_logits[:, :, 0] = -1e4
        assert torch.allclose(trunk(x)[:, 0], trunk(y)[:, 0], atol=1e-5)
        assert not torch.allclose(trunk(x)[:, 8], trunk(y)[:, 8])
    with pytest.raises(C.ConfigError, match="relation_bias"):
        C.load("synthetic-2tok-mdm", overrides=["model.relation_bias=true"])


def test_cpu_biased_attention_matches_sdpa_in_values_and_gradients():
    """The CPU path for a float bias (per head a baddbmm + softmax + bmm on strided views of the
    fused projection) is SDPA's result on the same projection, split into heads."""
    import torch.nn.functional as F
    from vmd.model.transformer import _biased_attention

    torch.manual_seed(0)
    b, n, heads, d = 3, 81, 4, 8
    qkv = torch.randn(b, n, 3 * heads * d, requires_grad=True)
    bias = torch.randn(heads, n, n, requires_grad=True)
    ours = _biased_attention(qkv, heads, bias, 0.0)
    q, k, v = qkv.view(b, n, 3, heads, d).permute(2, 0, 3, 1, 4)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=bias).transpose(1, 2).reshape(b, n, heads * d)
    assert torch.allclose(ours, ref, atol=1e-5)
    g = torch.randn_like(ref)
    grads = torch.autograd.grad((ours * g).sum(), (qkv, bias))
    ref_grads = torch.autograd.grad((ref * g).sum(), (qkv, bias))
    for a, b_ in zip(grads, ref_grads):
        assert torch.allclose(a, b_, atol=1e-4)
    dropped = _biased_attention(qkv, heads, bias, 0.5)  # dropout acts: not the dropout-free result
    assert not torch.allclose(dropped, ours, atol=1e-3)


def test_trunk_gives_the_same_values_and_gradients_whichever_attention_path_runs():
    """A learned relation bias goes through the per-head CPU path; a bias without a gradient
    (solving, or a frozen denoiser) through SDPA with a 4-D mask. Same logits, same input gradients."""
    from vmd.model.transformer import Trunk

    torch.manual_seed(0)
    trunk = Trunk(10, 81, 32, 2, 4, layout=sudoku_layout(), relation_bias=True)
    with torch.no_grad():
        trunk.relation_logits.normal_()  # zero at initialisation: give the bias something to do
    ids = torch.randint(0, 10, (5, 81))
    learned = trunk(ids)
    with torch.no_grad():
        solving = trunk(ids)
    assert torch.allclose(learned, solving, atol=1e-5)
    g = torch.randn_like(learned)
    ref = torch.autograd.grad((learned * g).sum(), trunk.blocks[0].qkv.weight)[0]
    trunk.relation_logits.requires_grad_(False)
    frozen = torch.autograd.grad((trunk(ids) * g).sum(), trunk.blocks[0].qkv.weight)[0]
    assert torch.allclose(frozen, ref, atol=1e-4)


def test_puzzle_training_never_masks_the_givens():
    task = make_task(sudoku_cfg(source="puzzles", grids=20, min_givens=30, max_givens=36).task)
    x0, given = task.train_batch(32, torch.Generator().manual_seed(0))
    assert given is not None and given.sum(1).min() >= 30
    xt, masked = mask_tokens(x0, torch.ones(32), make_schedule("linear"), 9, given)  # t = 1: everything maskable
    assert not (masked & given).any() and torch.equal(xt[given], x0[given]) and masked.sum() == (~given).sum()
    assert torch.equal(to_tokens(to_digits(x0)), x0)


def test_solve_keeps_givens_and_a_briefly_trained_model_fills_easy_puzzles(trained, easy_file):
    from vmd.checkpoint import load_model

    model, _, _ = load_model(trained)
    puzzles = torch.tensor([p.grid for p in parse(easy_file.read_text())])
    result = solve(model, puzzles, nfe=10, batch_size=5, restarts=1)
    assert torch.equal(result.grids[puzzles > 0], puzzles[puzzles > 0].long())
    assert torch.equal(result.solved, solved_mask(result.grids, puzzles))
    assert result.solved.double().mean() >= 0.5, result.solved  # 5-11 blanks each


def test_restarts_of_an_mdm_take_another_path_and_solve_more(trained):
    from vmd.checkpoint import load_model

    model, _, _ = load_model(trained)
    rng = random.Random(3)
    puzzles = torch.tensor([make_puzzle(rng, 70, 76)[0] for _ in range(40)])  # 9 of 40 solved at first
    once = solve(model, puzzles, nfe=3)
    again = solve(model, puzzles, nfe=3, restarts=3, seed=1)
    retried = ~once.solved
    assert 0 < retried.sum() < len(puzzles) and torch.equal(again.solved[once.solved], once.solved[once.solved])
    assert (again.attempts[retried] > 1).all() and (again.attempts[once.solved] == 1).all()
    # argmax values, but a perturbed order: the retries do not repeat the first attempt (without the
    # order noise none would differ; with it 36-55% of the last attempts did, seeds 0-7)
    assert (again.grids[retried] != once.grids[retried]).any(1).double().mean() > 0.25
    assert again.solved.sum() > once.solved.sum()


def test_an_mdm_solves_the_same_whatever_the_batching(trained, easy_file):
    from vmd.checkpoint import load_model

    model, _, _ = load_model(trained)
    puzzles = torch.tensor([p.grid for p in parse(easy_file.read_text())])
    assert default_batch_size("cpu") == 64 and default_batch_size("cuda") == 256
    default = solve(model, puzzles, nfe=3)  # argmax decoding is deterministic: batches must not matter
    assert torch.equal(default.grids, solve(model, puzzles, nfe=3, batch_size=3).grids)


def test_vmd_solve_cli_formats_and_exit_codes(trained, easy_file, tmp_path):
    r = runner.invoke(app, ["solve", str(easy_file), "--model", str(trained), "--format", "json"])
    assert r.exit_code in (0, 1), r.output
    rows = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == 12 and all(len(x["solution"] if x["solved"] else x["attempt"]) == 81 for x in rows)
    assert all(x["solution"] is None for x in rows if not x["solved"])
    assert r.exit_code == (0 if all(x["solved"] for x in rows) else 1)
    assert "solved" in r.stderr and "puzzles/s" in r.stderr
    r = runner.invoke(app, ["solve", str(easy_file), "--model", str(trained), "--format", "line"])
    assert [len(ln) for ln in r.stdout.splitlines()] == [81] * 12
    r = runner.invoke(app, ["solve", str(easy_file), "--model", str(trained)])
    assert "givens" in r.stdout and "|" in r.stdout
    first = easy_file.read_text().splitlines()[0]
    r = runner.invoke(app, ["solve", "-", "--model", str(trained), "--format", "line"], input=first + "\n")
    assert r.exit_code in (0, 1) and len(r.stdout.split()[0]) == 81  # stdin
    bad = tmp_path / "bad.txt"
    bad.write_text(to_line([0] * 81) + "\n" + "12" * 40 + "\n")
    r = runner.invoke(app, ["solve", str(bad), "--model", str(trained)])
    assert r.exit_code == 2 and "bad.txt:2: 80 cells" in r.stderr
    r = runner.invoke(app, ["solve", str(easy_file), "--model", str(tmp_path / "nothing")])
    assert r.exit_code == 2 and "does not exist" in r.stderr
    r = runner.invoke(app, ["solve", str(easy_file), "--model", str(easy_file)])
    assert r.exit_code == 2 and "is a file, not a run directory" in r.stderr
    r = runner.invoke(app, ["solve", str(easy_file), "--model", str(trained), "--format", "svg"])
    assert r.exit_code == 2 and "grid, line, json" in r.stderr


def test_vmd_eval_sudoku_table(trained, easy_file):
    r = runner.invoke(app, ["eval", str(trained), "--data", str(easy_file), "--nfe", "1,10", "--strategy",
                            "random,top-margin", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert set(out["accuracy"]) == {"random", "top-margin"} and set(out["accuracy"]["random"]) == {"1", "10"}
    assert out["puzzles"] == 12 and 0 <= out["accuracy"]["top-margin"]["10"] <= 1


def test_vmd_eval_sudoku_reports_the_latent(tmp_path):
    from vmd.checkpoint import load_model
    from vmd.evaluate import latent_stats
    from vmd.models import bundled_path

    rng = random.Random(5)
    pairs = [make_puzzle(rng, 34, 36) for _ in range(6)]
    path = tmp_path / "with-solutions.txt"  # puzzle and solution on one line
    path.write_text("".join(to_line(p) + " " + to_line(s) + "\n" for p, s in pairs))
    r = runner.invoke(app, ["eval", str(bundled_path("sudoku-vmd")), "--data", str(path), "--nfe", "5",
                            "--strategy", "top-margin", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    # the reported latent is that of the file's solutions under random masks (seed 0), not of the puzzles
    model, cfg, _ = load_model(bundled_path("sudoku-vmd"))
    want = latent_stats(model, to_tokens(torch.tensor([s for _, s in pairs])), None, cfg, seed=0)
    assert out["latent_dim"] == 16 and out["active_dims"] == want["active_dims"]
    assert out["latent_kl"] == pytest.approx(want["latent_kl"], rel=1e-4, abs=1e-6)
    assert out["z_gain"] == pytest.approx(want["z_gain"], rel=1e-3, abs=1e-5)
    r = runner.invoke(app, ["eval", str(bundled_path("sudoku-vmd")), "--data", str(path), "--z-policy", "bogus"])
    assert r.exit_code == 2 and "once, step, posterior" in r.stderr


def test_solving_with_the_bundled_model():
    from vmd.checkpoint import load_model
    from vmd.models import bundled_path

    rng = random.Random(11)
    pairs = [make_puzzle(rng, 30, 36) for _ in range(8)]
    model, cfg, _ = load_model(bundled_path("sudoku-vmd"))
    # the bundled CPU-trained VMD solves all 200 easy test puzzles at NFE 50 (docs/results-sudoku.md)
    result = solve(model, torch.tensor([p for p, _ in pairs]), nfe=50, z_policy=cfg.sample.z_policy)
    assert result.solved.double().mean() >= 0.75


def test_batches_solved_side_by_side_give_what_one_at_a_time_gives():
    """Each batch draws from its own seeded generator: the worker threads must not change a draw."""
    from vmd.checkpoint import load_model
    from vmd.models import bundled_path

    rng = random.Random(5)
    puzzles = torch.tensor([make_puzzle(rng, 24, 30)[0] for _ in range(10)])
    model, _, _ = load_model(bundled_path("sudoku-vmd"))
    threads = torch.get_num_threads()
    kw = dict(nfe=3, strategy="random", z_policy="step", restarts=1, batch_size=3)  # 4 batches, z and order drawn
    alone, side = solve(model, puzzles, workers=1, **kw), solve(model, puzzles, workers=3, **kw)
    assert torch.get_num_threads() == threads
    for a, b in ((alone.grids, side.grids), (alone.solved, side.solved), (alone.attempts, side.attempts)):
        assert torch.equal(a, b)
    assert not torch.equal(alone.grids, solve(model, puzzles, workers=3, seed=1, **kw).grids)  # the draws matter


def test_vmd_sample_draws_whole_grids(trained):
    r = runner.invoke(app, ["sample", str(trained), "-n", "3", "--nfe", "4"])
    assert r.exit_code == 0, r.output
    lines = r.stdout.split()
    assert len(lines) == 3 and all(len(x) == 81 and set(x) <= set("123456789") for x in lines)


def test_fused_cpu_linear_layers_in_inference_give_the_plain_ops_values():
    """Without gradients on the CPU the linear layers may run as oneDNN calls with the bias (and
    the MLP's GELU) fused; the denoiser's logits must not change (a VMD block too, whose inputs
    are modulated)."""
    from vmd.model.transformer import _probe_fused_linear, fused_linear_applies

    torch.manual_seed(0)
    for method in ("mdm", "vmd"):
        cfg = sudoku_cfg(method=method)
        task = make_task(cfg.task)
        model = build_model(cfg, task.vocab, task.length, task.layout).eval()
        for p in model.parameters():  # away from the zero-initialised modulation
            p.data.add_(torch.randn_like(p) * 0.05)
        x = torch.randint(0, task.vocab + 1, (4, task.length))
        z = torch.randn(4, model.latent_dim) if model.latent_dim else None
        plain = model(x, z)  # gradients enabled: the plain ops
        with torch.no_grad():
            assert fused_linear_applies(torch.zeros(1)) == _probe_fused_linear()
            assert torch.allclose(model(x, z), plain, atol=1e-4)
            with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast picks the dtypes: the plain ops
                assert not fused_linear_applies(torch.zeros(1))


def test_a_puzzle_solves_the_same_whatever_the_batching_the_workers_and_its_place():
    """Each puzzle draws from its own stream (the seed and its digits): batch sizes 64 / 32 / 7, one
    worker or two, and the file's order change no grid, no solved flag and no attempt count, with
    z, the cell order and the values all drawn (and with top-margin, where retries draw the order)."""
    from vmd.checkpoint import load_model
    from vmd.models import bundled_path

    rng = random.Random(9)
    puzzles = torch.tensor([make_puzzle(rng, 26, 34)[0] for _ in range(40)])
    model, _, _ = load_model(bundled_path("sudoku-vmd"))
    shuffle = torch.randperm(40, generator=torch.Generator().manual_seed(0))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two workers then run one thread each, as on a 2-core machine
    try:
        for kw in (dict(strategy="random", temperature=1.0, z_policy="step", restarts=1, nfe=3),
                   dict(strategy="top-margin", temperature=0.0, z_policy="step", restarts=1, nfe=3)):
            ref = solve(model, puzzles, batch_size=64, workers=1, **kw)
            assert 0 < ref.solved.sum() < 40 and (ref.attempts > 1).any()  # some retried, some solved
            moved = solve(model, puzzles[shuffle], batch_size=7, workers=2, **kw)
            back = [torch.empty_like(t).index_copy_(0, shuffle, t) for t in (moved.grids, moved.solved, moved.attempts)]
            for run in (solve(model, puzzles, batch_size=32, workers=2, **kw),
                        solve(model, puzzles, batch_size=7, workers=1, **kw), type(moved)(*back)):
                for a, b in ((ref.grids, run.grids), (ref.solved, run.solved), (ref.attempts, run.attempts)):
                    assert torch.equal(a, b)
        twice = solve(model, puzzles[[3, 3]], nfe=3, strategy="random", temperature=1.0, z_policy="step")
        assert torch.equal(twice.grids[0], twice.grids[1])  # the same puzzle twice: the same draws
    finally:
        torch.set_num_threads(threads)


def test_trace_is_solves_first_attempt_and_keeps_a_frame_for_every_step():
    """The playground's trace: solve's draws for the puzzle and seed, nfe + 1 frames even where
    steps reveal nothing (above the number of blanks), and no denoiser call for those."""
    from vmd.checkpoint import load_model
    from vmd.models import bundled_path
    from vmd.sudoku.solve import trace

    model, _, _ = load_model(bundled_path("sudoku-vmd"))
    puzzle = make_puzzle(random.Random(2), 70, 74)[0]  # 7-11 blanks
    blanks = puzzle.count(0)
    calls, forward = [], model.forward
    model.forward = lambda x, z=None: calls.append(1) or forward(x, z)
    for nfe, seed in ((3, 0), (3, 1), (20, 0)):
        calls.clear()
        tr = trace(model, puzzle, nfe=nfe, strategy="random", seed=seed, z_policy="step")
        assert tr.nfe == nfe and len(calls) == min(nfe, blanks)
        assert tr.frames[0] == list(puzzle) and 0 not in tr.frames[-1] and max(tr.filled_at) <= nfe
        for k in range(1, nfe + 1):  # frame k: the grid with the cells filled by step k, no more
            assert all((v == 0) == (f > k) for v, f in zip(tr.frames[k], tr.filled_at))
        alone = solve(model, torch.tensor([puzzle]), nfe=nfe, strategy="random", seed=seed, z_policy="step")
        assert alone.grids[0].tolist() == tr.frames[-1]


def test_a_trace_draws_at_its_temperature():
    """The playground's trace samples values at the model's temperature: at 0 an MDM fills an empty
    board the same way whatever the seed, at 1 two seeds make two grids."""
    from vmd.checkpoint import load_model
    from vmd.models import bundled_path
    from vmd.sudoku.solve import trace

    model = load_model(bundled_path("sudoku-mdm"))[0].eval()
    empty = [0] * 81
    cold = [trace(model, empty, nfe=20, seed=s).frames[-1] for s in (0, 1)]
    warm = [trace(model, empty, nfe=20, seed=s, temperature=1.0).frames[-1] for s in (0, 1)]
    assert cold[0] == cold[1] and warm[0] != warm[1]
    assert all(v > 0 for v in warm[0])  # every cell filled
