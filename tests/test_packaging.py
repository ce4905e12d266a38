import os
import subprocess
import sys
import zipfile
from pathlib import Path

from vmd import config as C

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_ships_every_preset_and_the_bundled_models(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
                        "-q", "-w", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    (wheel,) = tmp_path.glob("vmd-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for preset in C.list_presets():
        assert f"vmd/presets/{preset}.yaml" in names
    assert "vmd_cli/main.py" in names and "vmd/model/latent.py" in names and "vmd/sudoku/solver.py" in names
    assert "vmd/corpora/tinyshakespeare.txt" in names  # the text presets' corpus ships
    from vmd.models import BUNDLED

    # the bundled models, so that vmd solve, sample and play work offline: all of them within 25 MB
    sizes = [zipfile.ZipFile(wheel).getinfo(f"vmd/models/{model}.safetensors").file_size for model in BUNDLED]
    assert sum(sizes) <= 25 * 10**6  # 25 MB read strictly: million bytes

    # unpacked away from this checkout (no ../shared beside it), a text preset trains on the shipped corpus
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = subprocess.run([sys.executable, "-m", "vmd_cli", "train", "--preset", "shakespeare-bd3-block4", "--set",
                        "train.steps=1", "--set", "model.dim=16", "--set", "model.layers=1", "--set", "task.length=32",
                        "--set", "device.device=cpu", "--set", "train.eval_every=0", "--out", "run"],
                       capture_output=True, text=True, cwd=elsewhere, env={**os.environ, "PYTHONPATH": str(site)})
    assert r.returncode == 0, r.stderr
    assert str(site / "vmd" / "corpora" / "tinyshakespeare.txt") in r.stderr  # read from the install
