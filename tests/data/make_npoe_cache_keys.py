"""Snapshot of chapter 3's cache keys (written with the code before issue 25's split of
``lib/text/runs.py``): every configuration the chapter's page runs at ``smoke`` and ``quick`` with
its default parameters, and their ``config_hash``. ``tests/test_npoe_grid.py`` recomputes the same
set with the current API and checks that no key moved (users' cached runs stay valid).

    .venv/bin/python tests/data/make_npoe_cache_keys.py  # writes tests/data/npoe_cache_keys.json
"""
import json
from pathlib import Path

from moebackdoor.runcache import config_hash
from moebackdoor.text import data, runs
from moebackdoor.text.poisoning import SETTINGS

# the page's default parameters (notebooks/npoe.md)
METHODS = ["no_defense", "benign", "dpoe", "npoe", "onion", "bki", "strip", "rap"]
FIGURES = ["npoe-fig-beta", "npoe-fig-expert-depth", "npoe-fig-gate-layers", "npoe-fig-double-rate"]


def page_configs(profile: str) -> dict[str, list[dict]]:
    """The page's configurations as the notebook built them before issue 25, by role."""
    p = runs.profile(profile)
    poe_params = dict(beta=1.0, rdrop_alpha=15.0, gate_mask="inf")
    npoe_experts = dict(double_softmax=False, gate_on="text")
    runnable = [(ds, s) for ds in p["datasets"] for s in p["settings"]
                if not any(t == "syntactic" and ds not in data.SYNTACTIC_DATASETS
                           or t == "style" and ds not in data.STYLE_DATASETS for t in SETTINGS[s])]
    table = [runs.run_config(profile, ds, s, m, seed, style="bible",
                             poe_params=poe_params | dict(train_experts=True) if m == "npoe"
                             else poe_params if m == "dpoe" else None,
                             expert_params=npoe_experts if m == "npoe" else None)
             for ds, s in runnable for m in METHODS for seed in p["seeds"]]
    groups = {"table": table, "candidates": [], "final": []}
    for c in table:
        if c["method"] == "npoe":
            groups["candidates"] += runs.selection_configs(c)
            groups["final"] += [runs.with_beta(c, b) for b in p["select_beta"]]
    fig_dataset, fig_setting = runnable[0]
    for f in FIGURES:
        groups[f] = runs.figure_configs(profile, f, fig_dataset, fig_setting, p["seeds"][0], style="bible",
                                        poe_params=poe_params | dict(train_experts=True), expert_params=npoe_experts)
    every = [c for cs in groups.values() for c in cs]
    groups["experts"] = [runs.expert_config(c, j) for c in every if "experts" in c and c["experts"]["pretrain_steps"]
                         for j in range(c["experts"]["n"])]
    groups["base"] = [runs.base_config(c) for c in every if c["method"] in runs.DEFENSES]
    return groups


def snapshot() -> dict:
    out = {}
    for profile in ("smoke", "quick"):
        out[profile] = {}
        for name, configs in page_configs(profile).items():
            unique = {config_hash(c): c for c in configs}
            out[profile][name] = {"hashes": sorted(unique), "configs": [unique[h] for h in sorted(unique)]}
    return out


if __name__ == "__main__":
    path = Path(__file__).with_name("npoe_cache_keys.json")
    path.write_text(json.dumps(snapshot(), indent=1, sort_keys=True) + "\n")
    print(path, {p: {k: len(v["hashes"]) for k, v in g.items()} for p, g in json.loads(path.read_text()).items()})
