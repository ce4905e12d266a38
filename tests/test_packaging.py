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
    for model in ("sudoku-vmd", "sudoku-mdm"):  # the bundled models, so that vmd solve works offline
        info = zipfile.ZipFile(wheel).getinfo(f"vmd/models/{model}.safetensors")
        assert info.file_size < 25 * 2**20
