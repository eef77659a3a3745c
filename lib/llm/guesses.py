"""Chapter 4's guesses, each tested alone: why might Locphylax fail here where the paper's works?

Three guesses (``notebooks/locphylax.config.yaml``), each one parameter of
:func:`grid.locphylax_grid`, run on SST-2 under BadNet over three seeds with the setting the page
ran before beside the new one; clean fine-tuning trains for the same number of steps as each
Locphylax run (it is that run's dependency), so every row has its baseline at equal steps:

- ``cluster_token``: the clustering loss on ``<|im_end|>``, the answer's last token, which no
  output is predicted from (``answer_end``), or on the last prompt token, the state that produces
  the answer (``prompt_end``);
- ``stage1_batches``: stage-1 batches drawn at random (about 1.5 rows per known trigger in a
  batch of 8; a third of the batches lack one trigger and its centroid) or stratified;
- ``stage1_steps``: stage 1 until the defender's retention rule stops it (at most 4 epochs), or a
  fixed longer budget of 200 steps.

>>> [(g, s) for g, s, _ in guesses_grid("smoke", seeds=[0])][:2]
[('cluster_token', 'answer_end'), ('cluster_token', 'prompt_end')]
"""
from __future__ import annotations

from ..params import check_int, check_list
from ..runcache import RunCache
from .grid import locphylax_grid
from .locphylax_paper import guesses_table
from .runs import results

TABLE_ID = "locphylax-guesses"
# guess -> (the setting before, the new one); the page's defaults are the configuration's
GUESSES = {"cluster_token": ("answer_end", "prompt_end"), "stage1_batches": ("random", "stratified"),
           "stage1_steps": (None, 200)}
SEEDS = [0, 1, 2]
TASK, ATTACK = "sst2", "badnet"
METHODS = ["locphylax", "clean_finetune"]
SMOKE_STEPS = 3  # the fixed budget at smoke (every code path, seconds)


def setting_name(value) -> str:
    return "the retention rule" if value is None else f"{value} steps" if isinstance(value, int) else str(value)


def guesses_grid(profile: str, seeds=None) -> list[tuple[str, str, list[dict]]]:
    """``(guess, setting, configurations)`` per row: Locphylax and clean fine-tuning (same steps),
    one per seed, with that guess at that setting and everything else the page's default."""
    seeds = check_list("seeds", seeds, check_int) or (SEEDS if profile != "smoke" else [0])
    rows = []
    for guess, values in GUESSES.items():
        for value in values:
            if guess == "stage1_steps" and value is not None and profile == "smoke":
                value = SMOKE_STEPS
            grid = locphylax_grid(profile, tasks=[TASK], attacks=[ATTACK], methods=METHODS, seeds=seeds, figures=[],
                                  mismatch_template=None, **{guess: value})
            rows.append((guess, setting_name(value), grid.main))
    return rows


def guesses_results(profile: str, seeds=None, cache=None, executor=None, force: bool = False):
    """Run (or load) every row in one sweep: ``(rows with their runs, the Locphylax table of
    locphylax-guesses.csv, the clean fine-tuning baseline's table at the same steps)``."""
    rows = guesses_grid(profile, seeds)
    flat = [c for _, _, configs in rows for c in configs]
    loaded = iter(results(flat, cache or RunCache(), force=force, executor=executor))
    with_runs = [(g, s, [next(loaded) for _ in configs]) for g, s, configs in rows]
    by_method = {m: guesses_table([(g, s, [r for r in runs if r.config["method"] == m]) for g, s, runs in with_runs])
                 for m in METHODS}
    return with_runs, by_method["locphylax"], by_method["clean_finetune"]
