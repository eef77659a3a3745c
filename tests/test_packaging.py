"""The package installs as a wheel with every module (and data file) of lib/ in it."""
import shutil
import subprocess
import sys
import zipfile

from moebackdoor.paths import REPO_ROOT


def test_the_wheel_holds_every_module_of_lib(tmp_path):
    src = tmp_path / "src"  # a copy, so that the build leaves nothing in the checkout
    src.mkdir()
    for name in ("pyproject.toml", "setup.py"):
        shutil.copy(REPO_ROOT / name, src / name)
    shutil.copytree(REPO_ROOT / "lib", src / "lib", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    str(src), "-w", str(tmp_path / "dist")], check=True)
    [wheel] = (tmp_path / "dist").glob("moebackdoor-*.whl")
    inside = set(zipfile.ZipFile(wheel).namelist())
    expected = {"moebackdoor/" + p.relative_to(REPO_ROOT / "lib").as_posix()
                for p in (REPO_ROOT / "lib").rglob("*") if p.is_file() and p.suffix in (".py", ".json")
                and "__pycache__" not in p.parts}
    assert expected - inside == set()
    assert {"moebackdoor/llm/runs.py", "moebackdoor/text/runs.py", "moebackdoor/vision/attacks.py"} <= inside
