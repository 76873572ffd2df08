"""The planner's rates measured on this machine, tiny: the training rate times the library's
GS step (``train_step``) on the recipe's engine, and decoding is timed at the dataset's size."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from tiny_models import CONTEXT_LENGTH, TINY_CLIP

from streamfit import plan_measure
from streamfit.data.synthetic import write_synthetic_dataset
from streamfit.fit import FitConfig
from streamfit.plan import Dataset, Rates, Recipe
from streamfit.train.distributed import init_distributed


def test_training_rate_times_the_library_gs_step(tmp_path: Path, monkeypatch) -> None:
    write_synthetic_dataset(tmp_path, 8, 1, 16, 4, 0)
    cfg = plan_measure.demo_config()
    cfg = replace(
        cfg,
        model=replace(
            cfg.model, model_kwargs=TINY_CLIP, num_tokens=4, latent_dim=16, stem_dim=16,
            fourier_freqs=2, resampler_layers=1, resampler_heads=2, unfrozen_blocks=1,
        ),
        train=replace(cfg.train, epochs=1, warmup_steps=0),
    )  # fmt: skip
    data = replace(
        cfg.data, shards=f"{tmp_path}/train-*.tar", cache_dir=f"{tmp_path}/cache", image_size=16,
        batch_size=2, context_length=CONTEXT_LENGTH, decode_workers=1, log_every=0,
    )  # fmt: skip
    steps = []

    def counted(*args, **kwargs):
        steps.append(args[1])
        return train_step(*args, **kwargs)

    train_step = plan_measure.train_step
    monkeypatch.setattr(plan_measure, "train_step", counted)
    _, world, device = init_distributed()
    fit = FitConfig(gaussians=4, iters=2, backend="torch", device="cpu")
    rate, engine, loader = plan_measure.gs_train_rate(cfg, data, fit, world, device, epochs=2)
    assert rate > 0 and len(steps) == 2 * 4  # 8 samples in batches of 2, two epochs
    assert all(b["splats"].params.shape == (2, 4, 8) for b in steps)
    assert loader.epoch_stats(1).cache_hits == 8  # the timed epoch reads the cache
    assert engine.module is not None


def test_cpu_rates_not_given_are_measured_at_the_dataset_size() -> None:
    rates = plan_measure.measure_cpu_rates(
        Rates(loader=1.0), Dataset(10, 1, 1e3, source_pixels=48 * 48), Recipe(1, 16, 2, 32)
    )
    assert rates.decode > 0 and "48x48 JPEGs" in rates.sources["decode"]
    assert rates.loader == 1.0 and set(rates.sources) == {"decode"}  # given rates stay
