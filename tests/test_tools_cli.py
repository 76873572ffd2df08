"""Every tool's command line: ``--config FILE`` and ``key=value`` reach the tool's config
(through ``streamfit.cli``), and the shared precedence and table printer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from streamfit import cli
from streamfit.report import format_table

TOOLS = Path(__file__).resolve().parents[1] / "tools"

# tool -> (its required arguments, a key=value override, where the value lands, the value)
CASES = {
    "ablate_fit": (["x.jpg"], "lr_color=0.05", lambda c: c.lr_color, 0.05),
    "benchmark_fit": (["--device", "cpu"], "lr_color=0.05", lambda c: c.lr_color, 0.05),
    "benchmark_loader": ([], "fit.iters=7", lambda c: c.fit.iters, 7),
    "codec_compare": (["x.jpg"], "lr_color=0.05", lambda c: c.lr_color, 0.05),
    "cpu_time_split": ([], "repeats=3", lambda c: c.repeats, 3),
    "export_splats": (["--out", "o"], "fit.iters=7", lambda c: c.fit.iters, 7),
    "fit_images": (["x.jpg"], "iters=7", lambda c: c.iters, 7),
    "fuzz_shards": (["x.tar"], "cases=7", lambda c: c.cases, 7),
    "gpu_report": (["out"], "skip_windows=2", lambda c: c.skip_windows, 2),
    "kernel_report": ([], "sms=100", lambda c: c.sms, 100),
    "make_shards": (["synthetic", "--out", "o"], "n_train=12", lambda c: c.n_train, 12),
    "model_summary": ([], "num_tokens=8", lambda c: c.num_tokens, 8),
    "plan_run": ([], "nodes=3", lambda c: c.nodes, 3),
    "prune_sweep": (["x.jpg"], "iters=7", lambda c: c.iters, 7),
    "zeroshot_eval": (["--model", "m"], "max_samples=5", lambda c: c.max_samples, 5),
}


class _Parsed(Exception):
    """Stops a tool right after its command line is parsed, carrying the config."""

    def __init__(self, cfg: object) -> None:
        self.cfg = cfg


def _config_of(name: str, argv: list[str], monkeypatch, program) -> object:
    """The config ``tools/{name}.py`` resolves from ``argv`` (the tool does no work)."""
    module = program(f"tools/{name}")

    def parse(*args, **kwargs):
        raise _Parsed(cli.parse_tool_args(*args, **kwargs)[1])

    monkeypatch.setattr(module, "parse_tool_args", parse)
    with pytest.raises(_Parsed) as parsed:
        module.main(argv)
    return parsed.value.cfg


# tools that are another program's command line, not streamfit's (tests of their own)
WRAPPERS = {"clip_benchmark"}


def test_every_tool_is_covered():
    assert sorted(p.stem for p in TOOLS.glob("*.py")) == sorted([*CASES, *WRAPPERS])


@pytest.mark.parametrize("name", sorted(CASES))
def test_help_names_config_and_overrides(name, capsys, program):
    with pytest.raises(SystemExit) as stop:
        program(f"tools/{name}").main(["--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    assert "--config" in text and "key=value" in text


@pytest.mark.parametrize("name", sorted(CASES))
def test_override_and_config_file_reach_the_config(name, tmp_path, monkeypatch, program):
    required, override, get, value = CASES[name]
    assert get(_config_of(name, [*required, override], monkeypatch, program)) == value
    # the same setting from a YAML file (nested keys as YAML mappings)
    key, text = override.split("=")
    *parents, leaf = key.split(".")
    yaml = "".join(f"{'  ' * i}{p}:\n" for i, p in enumerate(parents))
    config = tmp_path / "c.yaml"
    config.write_text(f"{yaml}{'  ' * len(parents)}{leaf}: {text}\n")
    assert (
        get(_config_of(name, ["--config", str(config), *required], monkeypatch, program)) == value
    )


@dataclass
class _Settings:
    a: int = 1
    b: int = 1
    c: int = 1
    d: int = 1


def test_precedence_defaults_file_flags_overrides(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("b: 2\nc: 2\nd: 2\n")
    parser = cli.tool_parser("t", _Settings)
    parser.add_argument("--c", type=int)
    parser.add_argument("--d", type=int)
    argv = ["d=4", "--config", str(config), "--c", "3", "--d", "3"]
    _, cfg = cli.parse_tool_args(parser, _Settings, argv, defaults=["a=5", "b=5"])
    assert (cfg.a, cfg.b, cfg.c, cfg.d) == (5, 2, 3, 4)


def test_section_of_a_recipe_config(tmp_path):
    config = tmp_path / "recipe.yaml"
    config.write_text("fit:\n  a: 3\ntrain:\n  lr: 1.0\n")
    parser = cli.tool_parser("t", _Settings)
    _, cfg = cli.parse_tool_args(parser, _Settings, ["--config", str(config)], section="fit")
    assert cfg.a == 3


def test_bad_override_is_a_one_line_error(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.parse_tool_args(cli.tool_parser("t", _Settings), _Settings, ["e=1"])
    assert stop.value.code == 2
    assert "bad config value for 'e'" in capsys.readouterr().err.strip().splitlines()[-1]


def test_table_aligns_numbers_right_and_marks_missing():
    text = format_table(
        ["name", "dB", "share"], [["a", 1.234, None], ["bb", 22.0, 0.5]], ["", ".2f", ".0%"]
    )
    assert text.splitlines() == [
        "name     dB  share",
        "----  -----  -----",
        "a      1.23      -",
        "bb    22.00    50%",
    ]
    markdown = format_table(["name", "dB"], [["a", 1.0]], ["", ".1f"], markdown=True)
    assert markdown.splitlines() == ["| name | dB |", "| --- | ---: |", "| a | 1.0 |"]
