"""``vmd eval`` for tasks with held-out data (text): the NELBO of the validation or test split in
bits per character (or per token), with its standard error, and for a VMD the latent's state."""

from __future__ import annotations

from vmd_cli.main import err, fail, model_label, show_metrics


def eval_likelihood(model, cfg, step, dev, task, run_dir, *, split: str, max_sequences, draws: int, seed,
                    batch_size: int, as_json: bool) -> None:
    from vmd.evaluate import latent_stats, likelihood
    from vmd_cli.progress import progress_bar

    if split not in ("valid", "test"):
        fail(f"--split must be valid or test, got {split!r}")
    if draws < 1 or batch_size < 1 or (max_sequences is not None and max_sequences < 1):
        fail("--draws, --batch-size and --max-sequences must be >= 1")
    sequences = task.eval_sequences(split, max_sequences)
    with progress_bar(f"{split} NELBO", sequences.shape[0]) as (bar, job):
        r = likelihood(model, sequences, cfg, draws=draws, seed=seed or 0, batch_size=batch_size, device=dev,
                       on_batch=lambda k: bar.advance(job, k))
    unit = getattr(task, "unit", "token")
    key = "bpc" if unit == "character" else "bpt"
    result = {"method": cfg.method, "step": step, "split": split, key: r["bits"], f"{key}_stderr": r["stderr"],
              "tokens": r["tokens"], "sequences": r["sequences"], "draws": r["draws"], "seed": seed or 0,
              "block_size": model.block_size}
    if model.has_latent:
        result.update(latent_stats(model, sequences[:1024], None, cfg, seed=seed or 0, device=dev))
    show_metrics(result, f"{model_label(cfg, model)} text, step {step}: {split} split, bits per {unit}", str(run_dir),
                 as_json)
    if as_json:
        return
    err.print(f"an upper bound (NELBO, KL weight 1, {r['draws']} draws of the times per sequence); "
              f"{key} ± {1.96 * r['stderr']:.4f} is a 95% interval over the sequences", highlight=False)
