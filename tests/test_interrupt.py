"""Ctrl-C stops a chapter within seconds: the kernel goes with it and no page is left behind."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path
    from moebackdoor import book
    # as `python -m moebackdoor.book run` does: the terminal's progress monitor runs beside it
    book._execute_with_report(Path(sys.argv[1]), Path(sys.argv[2]), {}, "executing", record=False)
""")


@pytest.mark.skipif(os.name != "posix", reason="SIGINT to a process group is POSIX")
def test_ctrl_c_stops_a_running_chapter_within_seconds(tmp_path):
    marker = tmp_path / "training"
    notebook = tmp_path / "slow.md"
    notebook.write_text(textwrap.dedent(f"""\
        ---
        jupyter:
          kernelspec: {{display_name: Python 3, language: python, name: python3}}
        ---

        ```python tags=["parameters"]
        steps = 600
        ```

        ```python
        import os, time
        open({str(marker)!r}, "w").write(str(os.getpid()))
        for _ in range(steps):  # a long training loop in pure Python and in C (sleep)
            time.sleep(0.5)
        ```
        """))
    out = tmp_path / "out"
    # a terminal's Ctrl-C reaches every process of its foreground group
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(notebook), str(out)], start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not marker.exists() or not marker.read_text():
        assert proc.poll() is None, proc.stdout.read().decode()
        assert time.monotonic() < deadline, "the kernel never started"
        time.sleep(0.2)
    kernel = psutil.Process(int(marker.read_text()))
    os.killpg(proc.pid, signal.SIGINT)
    start = time.monotonic()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("the chapter was still running 15 s after Ctrl-C")
    took = time.monotonic() - start
    gone, alive = psutil.wait_procs([kernel], timeout=5)
    assert not alive, "the kernel outlived the interrupted chapter"
    assert proc.returncode != 0
    assert not list(out.glob("*.ipynb")), "an interrupted chapter left a page"
    assert took < 10, f"Ctrl-C took {took:.1f} s"
    assert "run the same command again to resume" in proc.stdout.read().decode()
