"""``vmd eval`` for tasks with held-out data (text): the NELBO of the validation or test split in
bits per character (or per token), with its standard error; with ``--bound-steps K`` the bound of
the K-step sampler beside it; and for a VMD the latent's state."""

from __future__ import annotations

from vmd_cli.common import model_label
from vmd_cli.console import err, fail, show_metrics


def eval_likelihood(model, cfg, step, dev, task, run_dir, *, split: str, max_sequences, draws: int, seed,
                    batch_size: int, as_json: bool, bound_steps: int | None = None) -> None:
    from vmd.evaluate import latent_stats, likelihood, mixture_stats
    from vmd.steps import check_steps
    from vmd_cli.progress import progress_bar

    if split not in ("valid", "test"):
        fail(f"--split must be valid or test, got {split!r}")
    if draws < 1 or batch_size < 1 or (max_sequences is not None and max_sequences < 1):
        fail("--draws, --batch-size and --max-sequences must be >= 1")
    if bound_steps is not None:
        check_steps(model, bound_steps)
    sequences = task.eval_sequences(split, max_sequences)
    bounds = {}
    for k in ([bound_steps] if bound_steps else []) + [0]:
        name = f"{k}-step bound" if k else "NELBO"
        with progress_bar(f"{split} {name}", sequences.shape[0]) as (bar, job):
            bounds[k] = likelihood(model, sequences, cfg, draws=draws, seed=seed or 0, batch_size=batch_size,
                                   device=dev, on_batch=lambda n: bar.advance(job, n), steps=k)
    unit = getattr(task, "unit", "token")
    key = "bpc" if unit == "character" else "bpt"
    r = bounds[bound_steps or 0]
    result = {"method": cfg.method, "step": step, "split": split, key: r["bits"], f"{key}_stderr": r["stderr"]}
    if bound_steps:
        c = bounds[0]
        result.update({"bound_steps": bound_steps, f"{key}_continuous": c["bits"], f"{key}_continuous_stderr": c["stderr"]})
    result.update({"tokens": r["tokens"], "sequences": r["sequences"], "draws": r["draws"], "seed": seed or 0,
                   "block_size": model.block_size, "trained_steps": cfg.diffusion.steps})
    if model.has_latent:
        result.update(latent_stats(model, sequences[:1024], None, cfg, seed=seed or 0, device=dev))
    if model.mixture:
        result.update(mixture_stats(model, sequences[:256], device=dev))
    what = f"the {bound_steps}-step sampler's bound" if bound_steps else "NELBO"
    show_metrics(result, f"{model_label(cfg, model)} text, step {step}: {split} split, bits per {unit} ({what})",
                 str(run_dir), as_json)
    if as_json:
        return
    if bound_steps:
        err.print(f"{key}: an upper bound on -log2 p(x) of the sampler that fills each "
                  f"{'block' if model.blocks > 1 else 'sequence'} in {bound_steps} steps of random order; "
                  f"{key}_continuous: the NELBO (one token a step), for comparison", highlight=False, soft_wrap=True)
    else:
        err.print(f"an upper bound (NELBO, KL weight 1, {r['draws']} draws of the times per sequence); "
                  f"{key} ± {1.96 * r['stderr']:.4f} is a 95% interval over the sequences", highlight=False, soft_wrap=True)
    if cfg.diffusion.steps and bound_steps != cfg.diffusion.steps:
        err.print(f"this run was trained for the {cfg.diffusion.steps}-step sampler: score that bound with "
                  f"--bound-steps {cfg.diffusion.steps}", highlight=False, soft_wrap=True)
