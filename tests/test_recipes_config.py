"""Bad config values stop a recipe at start with a message naming the key or the path."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def adapt(program):
    return program("recipes/gsclip_adapt")


def _exit_message(capsys, fn, *args) -> str:
    with pytest.raises(SystemExit) as err:
        fn(*args)
    assert err.value.code != 0
    return f"{err.value.code} {capsys.readouterr().err}"


@pytest.mark.parametrize(
    ("override", "names"),
    [
        ("train.lrr=0.1", "train.lrr"),
        ("train.epochs=many", "train.epochs"),
        ("data.batch_size=0", "data.batch_size"),
        ("train.precision=fp8", "train.precision"),
        ("train.zero_stage=3", "train.zero_stage"),
    ],
)
def test_bad_values_name_the_key(adapt, capsys, tmp_path, override, names):
    # the other overrides keep a check that failed to fire from starting the demo
    safe = [f"run.dir={tmp_path}", "synthetic.generate=false", f"data.shards={tmp_path}/x.tar"]
    message = _exit_message(capsys, adapt.main, [*safe, override])
    assert names in message


def test_missing_config_file_names_the_path(adapt, capsys):
    message = _exit_message(capsys, adapt.main, ["--config", "/nonexistent/run.yaml"])
    assert "/nonexistent/run.yaml" in message


def test_missing_teacher_file_names_the_key_and_path(adapt, capsys, tmp_path):
    message = _exit_message(
        capsys,
        adapt.main,
        [f"run.dir={tmp_path}", "model.pretrained=/nonexistent/teacher.pt", "synthetic.generate=false",
         f"data.shards={tmp_path}/*.tar", "eval.data=''"],
    )  # fmt: skip
    # either check may come first: no shards, or no teacher; make the shards exist
    assert "data.shards" in message
    (tmp_path / "a.tar").write_bytes(b"")
    message = _exit_message(
        capsys,
        adapt.main,
        [f"run.dir={tmp_path}", "model.pretrained=/nonexistent/teacher.pt", "synthetic.generate=false",
         f"data.shards={tmp_path}/*.tar", "eval.data=''"],
    )  # fmt: skip
    assert "model.pretrained" in message and "/nonexistent/teacher.pt" in message


def test_no_matching_shards_names_the_key_and_pattern(adapt, capsys, tmp_path):
    message = _exit_message(
        capsys,
        adapt.main,
        [f"run.dir={tmp_path}", "synthetic.generate=false", f"data.shards={tmp_path}/none-*.tar"],
    )
    assert "data.shards" in message and f"{tmp_path}/none-*.tar" in message
