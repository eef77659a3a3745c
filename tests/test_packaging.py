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


def test_publishing_files_load_and_the_pages_workflow_builds_the_quick_book():
    import yaml

    from moebackdoor import book

    cff = yaml.safe_load((REPO_ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and len(cff["references"]) == 3 and cff["license"] == "MIT"
    assert "MANIFEST.md" in (REPO_ROOT / "LICENSE").read_text()  # the data keep their own terms
    flow = yaml.safe_load((REPO_ROOT / ".github" / "workflows" / "pages.yml").read_text())
    # every chapter executes at quick in exactly one job of the matrix, with its domain's run cache
    chapters = flow["jobs"]["chapters"]
    groups = [m["chapters"].split() for m in chapters["strategy"]["matrix"]["include"]]
    assert sorted(c for g in groups for c in g) == sorted(s.stem for s in book.chapter_sources())
    [execute] = [s["run"] for s in chapters["steps"] if "run" in s]
    assert execute.startswith("make book PROFILE=quick CHAPTERS=")
    saves = [s for s in chapters["steps"] if s.get("uses", "").startswith("actions/cache/save")]
    assert saves and saves[0]["if"] == "always()"  # a chapter stopped by its time limit keeps its runs
    # the last job builds the HTML from the executed chapters, executing none
    steps = flow["jobs"]["build"]["steps"]
    [build] = [s["run"] for s in steps if "run" in s]
    assert build == "make html"
    [upload] = [s for s in steps if s.get("uses", "").startswith("actions/upload-pages-artifact")]
    assert upload["with"]["path"] == "book/_build/html"
    for command, wanted in ((execute.replace('"${{ matrix.chapters }}"', "npoe"), "--profile quick --only npoe"),
                            (build, "execute --only " + " ".join(book.SUMMARY_PAGES))):
        dry = subprocess.run(command.replace("make ", "make -n ", 1).split(), cwd=REPO_ROOT, capture_output=True,
                             text=True)
        assert dry.returncode == 0 and wanted in dry.stdout and "moebackdoor.book build" in dry.stdout