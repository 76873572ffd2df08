"""tools/ablate_fit.py end to end on a few generated images."""

import json

import numpy as np
from PIL import Image

from tools import ablate_fit


def test_ablation_table_json_and_plot(tmp_path, capsys):
    rng = np.random.default_rng(0)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for k in range(3):
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(folder / f"{k}.png")
    code = ablate_fit.main(
        [
            str(folder),
            "--size", "16", "--gaussians", "12", "--budgets", "2,4", "--old-budgets", "6",
            "--variants", "old-default,new-default", "--target", "10", "--batch", "2",
            "--json", str(tmp_path / "a.json"), "--plot", str(tmp_path / "a.png"),
        ]
    )  # fmt: skip
    assert code == 0
    summary = json.loads((tmp_path / "a.json").read_text())
    old, new = summary["rows"]
    assert summary["images"] == 3
    assert set(old["psnr"]) == {"0", "2", "4", "6"} and set(new["psnr"]) == {"0", "2", "4"}
    assert new["reach_iters"] in (2, 4) and new["reach_seconds"] > 0
    assert (tmp_path / "a.png").stat().st_size > 0
    assert "| new-default |" in capsys.readouterr().out
