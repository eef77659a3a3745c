"""Chapter 3's page as one experiment: :func:`npoe_grid` checks every parameter of the page and
builds every configuration it runs, by role; :func:`npoe_results` runs them (one sweep for all
that is known up front, their pre-trained experts and No defense models first, then NPoE at the
β its pseudo-dev rule chooses) and returns the runs by role and the tables the page shows.

>>> grid = npoe_grid("smoke", methods=["no_defense", "npoe"], figures=[])
>>> [c["method"] for c in grid.table], list(grid.candidates)
(['no_defense', 'npoe'], [('sst2', 'mix4', 0)])
>>> res = npoe_results(grid)  # doctest: +SKIP
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from ..executors import EXECUTORS
from ..params import check_bool, check_choice, check_choices, check_int, check_list, check_positive
from ..pretrained import OFFLINE_ENCODERS, check_model_name
from ..runcache import Run, RunCache, config_hash
from . import npoe_paper, poe
from .config import FIGURES, GATE_INPUTS, METHODS, PRETRAIN_SCHEDULES, figure_configs, profile as profile_settings, \
    requires, run_config, run_label, selection_configs
from .data import DATASETS, STYLE_DATASETS, SYNTACTIC_DATASETS
from .poisoning import PRETRAIN_LABELS, PRETRAIN_SOURCES, SETTINGS
from .training import EXPERT_MODES
from .runs import choose, minutes, run

ALL_METHODS = list(METHODS)
# issue 26: each difference between this chapter (before the issue) and the authors' NPoE and DPoE
# code as :func:`npoe_grid` parameters: what it is, the authors' choice and ours before (at quick)
DIFFERENCES = {
    "pretrain_schedule": dict(
        what="the experts' pre-training learning rate",
        authors_text="the joint run's schedule: batch k at k / warm-up x small_lr (close to a no-op)",
        ours_text="its own warm-up and decay over the pre-training batches",
        authors=dict(pretrain_schedule="authors"), ours=dict(pretrain_schedule="own")),
    "pretrain_labels": dict(
        what="the experts' pre-training labels",
        authors_text="triggered rows the target, clean rows of class 0 kept as 0 (about 2/3 triggered)",
        ours_text="half triggered labelled 1, half clean rows of both classes labelled 0",
        authors=dict(pretrain_labels="authors"), ours=dict(pretrain_labels="own")),
    "pretrain_source": dict(
        what="the syntactic (and style) expert's pre-training sentences",
        authors_text="the attacked dataset (its dev rows, OpenBackdoor's SCPN run; the same template, none other is offline)",
        ours_text="AG News SCPN paraphrases (style: another style of SST-2's training rows)",
        authors=dict(pretrain_source="attacked"), ours=dict(pretrain_source="own")),
    "expert_mode": dict(
        what="dropout in the experts and the gate",
        authors_text="none: eval mode, only the main model trains in train mode",
        ours_text="train mode (dropout 0.1)",
        authors=dict(expert_mode="eval"), ours=dict(expert_mode="train")),
    "learning_rates": dict(
        what="learning rates (main, NPoE's experts and gate, DPoE's expert)",
        authors_text="2e-5, 5e-4 (small_lr's default), 8e-5; freeze_main_iters 0 (their default)",
        ours_text="3e-5, 2e-5, 8e-5",
        authors=dict(lr=2e-5, small_lr=5e-4, dpoe_small_lr=8e-5), ours=dict(lr=3e-5, small_lr=2e-5, dpoe_small_lr=8e-5)),
    "dpoe_shallow": dict(
        what="DPoE's shallow model",
        authors_text="3 layers (their script sweeps 2-5), R-drop 3.0",
        ours_text="1 layer, R-drop 15",
        authors=dict(dpoe_layers=3, dpoe_rdrop_alpha=3.0), ours=dict(dpoe_layers=1, dpoe_rdrop_alpha=15.0)),
}
ALL_FIGURES = list(FIGURES)
Key = tuple  # (dataset, setting, seed)


@dataclass
class NPoEGrid:
    """Every configuration of the page, by role, and the checked parameters it was built from."""
    profile: str
    runnable: list[tuple[str, str]]  # (dataset, setting) pairs that run
    skipped: list[tuple[str, str, list[str]]]  # (dataset, setting, the trigger types with no data for it)
    table: list[dict]  # the table's runs; NPoE's at β 1, its β chosen among ``candidates``
    candidates: dict[Key, list[dict]]  # NPoE's β candidates per (dataset, setting, seed)
    figures: dict[str, list[dict]]  # each sensitivity figure's runs
    fig_dataset: str
    fig_setting: str
    seeds: list[int]
    select_rule: str
    betas: list[float] | None  # the β grid given (None: the profile's)
    executor: str | None = None
    force: bool = False
    parameters: dict = field(default_factory=dict)  # the page's parameters as checked (None: the profile's value)

    def groups(self) -> dict[str, list[dict]]:
        """What is known up front, by name: the table's runs but NPoE's, the candidates, each figure."""
        return {"table": [c for c in self.table if c["method"] != "npoe"],
                "candidates": [c for cs in self.candidates.values() for c in cs], **self.figures}

    def config_of(self, method: str) -> dict | None:
        """The table's first run of ``method`` (None if it has none)."""
        return next((c for c in self.table if c["method"] == method), None)


def runnable_settings(datasets, settings) -> tuple[list, list]:
    """The (dataset, setting) pairs that run, and those that cannot (a trigger type with no
    pre-generated paraphrases for the dataset), with the missing trigger types."""
    runnable, skipped = [], []
    for ds in datasets:
        for setting in settings:
            missing = [t for t in SETTINGS[setting] if t == "syntactic" and ds not in SYNTACTIC_DATASETS
                       or t == "style" and ds not in STYLE_DATASETS]
            if missing:
                skipped.append((ds, setting, missing))
            else:
                runnable.append((ds, setting))
    return runnable, skipped


def npoe_grid(profile: str, datasets=None, settings=None, methods=ALL_METHODS, mix4_methods=None,
              style_name: str = "bible", seeds=None, encoder: str | None = None, n_train: int | None = None,
              epochs: int | None = None, beta: float | None = None, select_rule: str = "code",
              rdrop_alpha: float = 15.0, train_experts: bool = True, gate_mask: str = "inf",
              double_softmax: bool = False, pretrain_epochs: int | None = None, gate_on: str = "text",
              figures=ALL_FIGURES, executor: str | None = None, force: bool = False,
              pretrain_schedule: str = "own", pretrain_labels: str = "own", pretrain_source: str = "own",
              expert_mode: str = "train", freeze_main_iters: int = 0, lr: float | None = None,
              small_lr: float | None = None, dpoe_small_lr: float | None = None, dpoe_layers: int | None = None,
              dpoe_rdrop_alpha: float | None = None) -> NPoEGrid:
    """Check the page's parameters (the first wrong one raises :class:`ParameterError`, before
    any work) and build every configuration the page runs. The parameters are the page's
    (``notebooks/npoe.md``); None takes the profile's value.

    Issue 26's differences from the authors' code, each one parameter (the default is ours
    before, so that every cached run keeps its key; :data:`DIFFERENCES` names the authors'
    value): NPoE's ``pretrain_schedule``, ``pretrain_labels``, ``pretrain_source`` (the experts'
    pre-training), ``expert_mode`` (NPoE's and DPoE's experts and gate with or without dropout),
    ``freeze_main_iters`` (NPoE), the learning rates ``lr`` (every trained method's main model),
    ``small_lr`` (NPoE's experts and gate) and ``dpoe_small_lr``, and DPoE's shallow model,
    ``dpoe_layers`` and ``dpoe_rdrop_alpha`` (None: ``rdrop_alpha``)."""
    p = profile_settings(profile)
    datasets = p["datasets"] if datasets is None else check_choices("datasets", datasets, DATASETS)
    settings = p["settings"] if settings is None else check_choices("settings", settings, SETTINGS)
    check_choices("methods", methods, METHODS)
    mix4_methods = methods if mix4_methods is None else check_choices("mix4_methods", mix4_methods, METHODS)
    check_choice("gate_mask", gate_mask, poe.GATE_MASKS)
    beta = None if beta is None else check_positive("beta", beta)
    check_choice("select_rule", select_rule, poe.PSEUDO_DEV_RULES)
    rdrop_alpha = check_positive("rdrop_alpha", rdrop_alpha, allow_zero=True)
    check_bool("double_softmax", double_softmax)
    check_bool("train_experts", train_experts)
    pretrain_epochs = None if pretrain_epochs is None else check_int("pretrain_epochs", pretrain_epochs, 1)
    check_choice("gate_on", gate_on, GATE_INPUTS)
    check_choice("pretrain_schedule", pretrain_schedule, PRETRAIN_SCHEDULES)
    check_choice("pretrain_labels", pretrain_labels, PRETRAIN_LABELS)
    check_choice("pretrain_source", pretrain_source, PRETRAIN_SOURCES)
    check_choice("expert_mode", expert_mode, EXPERT_MODES)
    check_int("freeze_main_iters", freeze_main_iters, 0)
    lr, small_lr, dpoe_small_lr = (None if v is None else check_positive(name, v) for name, v in
                                   (("lr", lr), ("small_lr", small_lr), ("dpoe_small_lr", dpoe_small_lr)))
    dpoe_layers = None if dpoe_layers is None else check_int("dpoe_layers", dpoe_layers, 1)
    dpoe_rdrop_alpha = rdrop_alpha if dpoe_rdrop_alpha is None else \
        check_positive("dpoe_rdrop_alpha", dpoe_rdrop_alpha, allow_zero=True)
    figures = check_choices("figures", figures, FIGURES) if figures else []
    check_bool("force", force)
    check_choice("executor", executor, [None, *EXECUTORS])
    seeds = check_list("seeds", seeds, check_int) or list(p["seeds"])
    if encoder is not None:  # before any run: a name that cannot load fails now, not after minutes
        check_model_name("encoder", encoder, OFFLINE_ENCODERS)
    given = lambda **kw: {k: v for k, v in kw.items() if v is not None}
    overrides = given(encoder=encoder, n_train=n_train, epochs=epochs, lr=lr)
    # issue 26's settings: PoE and the experts' settings hold them only where they differ from ours before
    poe_params = dict(beta=beta or 1.0, rdrop_alpha=rdrop_alpha, gate_mask=gate_mask, expert_mode=expert_mode)
    npoe_poe = poe_params | dict(train_experts=train_experts, freeze_main_iters=freeze_main_iters)
    npoe_experts = dict(double_softmax=double_softmax, gate_on=gate_on, pretrain_schedule=pretrain_schedule,
                        pretrain_labels=pretrain_labels, pretrain_source=pretrain_source) \
        | given(pretrain_epochs=pretrain_epochs)
    runnable, skipped = runnable_settings(datasets, settings)
    method_params = {"npoe": dict(poe_params=npoe_poe, expert_params=npoe_experts, **given(small_lr=small_lr)),
                     "dpoe": dict(poe_params=poe_params | dict(rdrop_alpha=dpoe_rdrop_alpha),
                                  **({} if dpoe_layers is None else dict(expert_params=dict(layers=dpoe_layers))),
                                  **given(small_lr=dpoe_small_lr))}
    table = [run_config(profile, ds, setting, m, seed, style=style_name, **method_params.get(m, {}), **overrides)
             for ds, setting in runnable for m in (mix4_methods if setting == "mix4" else methods) for seed in seeds]
    betas = None if beta is None else [beta]
    candidates = {(c["dataset"], c["setting"], c["seed"]): selection_configs(c, betas)
                  for c in table if c["method"] == "npoe"}
    fig_dataset, fig_setting = runnable[0] if runnable else ("sst2", "mix3")
    fig_configs = {f: figure_configs(profile, f, fig_dataset, fig_setting, seeds[0], style=style_name,
                                     poe_params=npoe_poe, expert_params=npoe_experts,
                                     **{k: v for k, v in overrides.items() if k in ("encoder", "lr")},
                                     **given(small_lr=small_lr))
                   for f in figures}
    checked = dict(datasets=datasets, settings=settings, mix4_methods=mix4_methods, beta=beta,
                   rdrop_alpha=rdrop_alpha, pretrain_epochs=pretrain_epochs, figures=figures, seeds=seeds,
                   dpoe_rdrop_alpha=dpoe_rdrop_alpha)
    return NPoEGrid(profile, runnable, skipped, table, candidates, fig_configs, fig_dataset, fig_setting, seeds,
                    select_rule, betas, executor, force, checked)


@dataclass
class NPoEResults:
    """The page's runs by role, and the tables built from them."""
    table_runs: list[Run]  # in the order of ``grid.table``; NPoE's at its chosen β
    selections: dict[Key, tuple[list[Run], int, Run]]  # (candidates, index of the chosen, the table's run)
    figures: dict[str, list[Run]]
    page_runs: list[Run]  # every run the page used, with the experts and models they needed
    table: pd.DataFrame  # :func:`npoe_paper.results_table`
    sensitivity: dict[str, pd.DataFrame]  # :func:`npoe_paper.sensitivity_table`, per figure

    @property
    def train_minutes(self) -> float:
        """The table's runs' training and defense minutes, when they were trained."""
        return sum(r.metrics.get("history", {}).get("seconds", 0) + r.metrics.get("defense_seconds", 0)
                   for r in self.table_runs) / 60

    @property
    def minutes(self) -> float:
        return minutes(self.page_runs)

    @property
    def n_runs(self) -> int:
        return len({r.path.name for r in self.page_runs})

    @property
    def select_n_train(self) -> int | None:
        """The training sentences of NPoE's β candidates (None: all; also when there are none)."""
        return next(iter(self.selections.values()))[0][0].config["n_train"] if self.selections else None


def npoe_results(grid: NPoEGrid, cache: RunCache | None = None) -> NPoEResults:
    """Train (or load) the page's runs: one sweep over all that is known up front (what they
    need first, :func:`config.requires`), then NPoE at the β its pseudo-dev rule chooses
    (``grid.select_rule``) where that is not a candidate already."""
    cache = cache or RunCache()
    kwargs = dict(force=grid.force, desc="NPoE runs", label=run_label, executor=grid.executor, requires=requires)
    groups = grid.groups()
    loaded = cache.sweep_groups(groups, run, **kwargs)
    by_hash = {config_hash(c): r for name, cs in groups.items() for c, r in zip(cs, loaded[name])}
    cands = {key: [by_hash[config_hash(c)] for c in cs] for key, cs in grid.candidates.items()}
    chosen = {}  # (dataset, setting, seed) -> (the table's config at the chosen β, the chosen index)
    for c in grid.table:
        if c["method"] == "npoe":
            chosen[c["dataset"], c["setting"], c["seed"]] = choose(c, cands[c["dataset"], c["setting"], c["seed"]],
                                                                   grid.select_rule)
    finals = [final for key, (final, k) in chosen.items() if final != grid.candidates[key][k]]
    by_hash |= {config_hash(c): r for c, r in zip(finals, cache.sweep(finals, run, **kwargs) if finals else [])}
    selections = {key: (cands[key], k, by_hash[config_hash(final)]) for key, (final, k) in chosen.items()}
    table_runs = [selections[c["dataset"], c["setting"], c["seed"]][2] if c["method"] == "npoe"
                  else by_hash[config_hash(c)] for c in grid.table]
    figures = {f: [by_hash[config_hash(c)] for c in cs] for f, cs in grid.figures.items()}
    used = table_runs + [r for cs in cands.values() for r in cs] + [r for rs in figures.values() for r in rs]
    page_runs = used + [cache.load(d) for r in used for d in requires(r.config)]
    return NPoEResults(table_runs, selections, figures, page_runs, npoe_paper.results_table(table_runs),
                       {f: npoe_paper.sensitivity_table(rs, f) for f, rs in figures.items()})
