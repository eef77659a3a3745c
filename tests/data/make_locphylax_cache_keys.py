"""Snapshot of chapter 4's cache keys, written with the code before issue 25's split of
``lib/llm/runs.py`` (commit f9504e7): every run the chapter's page trains or reads, with its
``config_hash``, by role. ``tests/test_locphylax_grid.py`` recomputes the same sets with the current
API and checks that no key moved (users' cached runs stay valid).

The page's configurations come from executing the page's own parameters cell and setup cell (as
papermill would, the scenario's values injected after the defaults); the runs that the old run
functions looked up in a cache of their own are derived as those functions derived them:

- ``attack``: the attack run of every defense and of the template re-evaluation (``attack_config``);
- ``budget``: the Locphylax run whose ``steps_used`` sets the budget of clean fine-tuning, CROW and
  stage 2 alone (``dict(config, method="locphylax")``);
- ``clean_adapter``: the adapter a floor run evaluates (trained once per task);
- ``aggregation``, ``critical_layers``: the figures' analyses of the first Locphylax run.

    .venv/bin/python tests/data/make_locphylax_cache_keys.py  # writes tests/data/locphylax_cache_keys.json

It reads the old page and the old ``runs`` module: to run it again, check out f9504e7 first.
"""
import json
from pathlib import Path
from types import SimpleNamespace

import jupytext

from moebackdoor.runcache import config_hash

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "locphylax.md"
# scenario name -> (profile, page parameters other than the defaults)
SCENARIOS = {
    "smoke": {"profile": "smoke"},
    "quick": {"profile": "quick"},
    "paper": {"profile": "paper"},
    "smoke-variants": {"profile": "smoke", "attacks": ["badnet", "vpi"], "full_attacks": ["badnet"],
                       "custom_trigger": {"phrase": "cheese toast", "placement": "suffix"}, "seeds": [0, 2],
                       "methods": ["no_defense", "locphylax", "clean_finetune", "pruning", "crow",
                                   "locphylax_no_cluster", "locphylax_one_trigger", "locphylax_stage2_only",
                                   "locphylax_label_targets"]},
    "quick-options": {"profile": "quick", "defense_finetune": "full", "attack_finetune": "full",
                      "known_targets": "labels", "cluster_states": "raw", "cluster_token": "prompt_end",
                      "sparsity": 0.3, "n_poison": 20, "epochs": 1, "template": "alpaca", "seed": 3,
                      "known_triggers": [["cf", "prefix", "Yes!"], ["mn", "suffix", "No!"]],
                      "figures": ["locphylax-fig-critical-layers"], "attacks": ["vpi", "ctba"],
                      "methods": ["no_defense", "locphylax", "clean_finetune", "crow"]},
    "quick-no-mismatch": {"profile": "quick", "mismatch_template": None, "figures": [], "tasks": ["sst2", "refusal"],
                          "methods": ["no_defense", "locphylax", "locphylax_stage2_only"]},
}


def page_namespace(parameters: dict) -> dict:
    """The page's variables after its parameters cell and its setup cell, as the old page built them."""
    cells = [c for c in jupytext.read(NOTEBOOK).cells if c.cell_type == "code"]
    ns = {}
    exec(cells[0].source, ns)
    ns.update(parameters)
    setup = cells[1].source.replace("from myst_nb import glue\n", "")
    ns["glue"] = lambda *a, **k: None
    exec(setup, ns)
    return ns


def page_configs(parameters: dict) -> dict[str, list[dict]]:
    from moebackdoor.llm import runs

    ns = SimpleNamespace(**page_namespace(parameters))
    groups = {"main": ns.configs, "floor": ns.floor_configs, "mismatch": ns.mismatch_configs}
    groups["attack"] = [runs.attack_config(c) for c in ns.configs + ns.mismatch_configs if c["method"] != "no_defense"
                        or c["eval_template"] != c["template"]]
    groups["budget"] = [dict(c, method="locphylax") for c in ns.configs
                        if c["method"] in ("clean_finetune", "crow", "locphylax_stage2_only")]
    groups["clean_adapter"] = [{k: v for k, v in c.items() if k not in ("attack", "eval_template")}
                               | {"method": "clean_model_adapter"} for c in ns.floor_configs]
    loc = [c for c in ns.configs if c["method"] == "locphylax"]
    for kind, figure in (("aggregation", "locphylax-fig-aggregation"),
                         ("critical_layers", "locphylax-fig-critical-layers")):
        groups[kind] = [{"chapter": "locphylax", "analysis": kind, "of": loc[0]}] if loc and figure in ns.figures else []
    return groups


def snapshot() -> dict:
    out = {}
    for name, parameters in SCENARIOS.items():
        out[name] = {"parameters": parameters, "groups": {}}
        for group, configs in page_configs(parameters).items():
            unique = {config_hash(c): c for c in configs}
            out[name]["groups"][group] = {"hashes": sorted(unique), "configs": [unique[h] for h in sorted(unique)]}
    return out


if __name__ == "__main__":
    path = Path(__file__).with_name("locphylax_cache_keys.json")
    path.write_text(json.dumps(snapshot(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {path}")
