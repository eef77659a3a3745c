"""Chapter 3's page as one experiment: :func:`npoe_grid` checks every parameter of the page and
builds every configuration it runs, by role; :func:`npoe_results` runs them (one sweep for all
that is known up front, their pre-trained experts and No defense models first, then NPoE in the
regime and at the β its pseudo-dev rule chooses, and the figures in that regime) and returns the
runs by role and the tables the page shows.

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
from .config import FIGURES, GATE_INPUTS, METHODS, PRETRAIN_SCHEDULES, REGIMES, figure_configs, profile as profile_settings, \
    requires, run_config, run_label, selection_configs, with_beta
from .data import DATASETS, STYLE_DATASETS, SYNTACTIC_DATASETS
from .poisoning import PRETRAIN_LABELS, PRETRAIN_SOURCES, SETTINGS
from .training import EXPERT_MODES
from .runs import run

ALL_METHODS = list(METHODS)
ALL_FIGURES = list(FIGURES)
Key = tuple  # (dataset, setting, seed)


@dataclass
class NPoEGrid:
    """Every configuration of the page, by role, and the checked parameters it was built from."""
    profile: str
    runnable: list[tuple[str, str]]  # (dataset, setting) pairs that run
    skipped: list[tuple[str, str, list[str]]]  # (dataset, setting, the trigger types with no data for it)
    table: list[dict]  # the table's runs; NPoE's in the first regime at β 1, its regime and β chosen among ``candidates``
    candidates: dict[Key, list[dict]]  # NPoE's candidates (regime x β) per (dataset, setting, first seed)
    figures: dict[str, list[dict]]  # each sensitivity figure's runs, in the first regime (:meth:`figures_for`)
    fig_dataset: str
    fig_setting: str
    seeds: list[int]
    select_rule: str
    betas: list[float] | None  # the β grid given (None: the profile's)
    executor: str | None = None
    force: bool = False
    parameters: dict = field(default_factory=dict)  # the page's parameters as checked (None: the profile's value)
    regimes: list[dict] = field(default_factory=list)  # NPoE's candidate regimes: name, small_lr, train_experts
    figure_args: dict = field(default_factory=dict)  # what :meth:`figures_for` builds the figures from

    def groups(self) -> dict[str, list[dict]]:
        """What is known up front, by name: the table's runs but NPoE's, the candidates, and each
        figure where there is one regime (else the figures wait for the choice)."""
        return {"table": [c for c in self.table if c["method"] != "npoe"],
                "candidates": [c for cs in self.candidates.values() for c in cs],
                **(self.figures if len(self.regimes) <= 1 else {})}

    def config_of(self, method: str) -> dict | None:
        """The table's first run of ``method`` (None if it has none)."""
        return next((c for c in self.table if c["method"] == method), None)

    def figures_for(self, regime: dict) -> dict[str, list[dict]]:
        """Each figure's runs with NPoE's experts in ``regime`` (``small_lr``, ``train_experts``)."""
        a = self.figure_args
        if not a:
            return {}
        poe_params = a["poe_params"] | dict(train_experts=regime["train_experts"])
        return {f: figure_configs(self.profile, f, self.fig_dataset, self.fig_setting, self.seeds[0],
                                  style=a["style"], poe_params=poe_params, expert_params=a["expert_params"],
                                  small_lr=regime["small_lr"], **a["overrides"])
                for f in a["figures"]}


def regime_of(config: dict) -> dict:
    """The regime an NPoE configuration trains in: its experts' and gate's rate, and whether the
    experts train jointly."""
    return dict(small_lr=config["recipe"]["small_lr"], train_experts=config["poe"]["train_experts"])


def with_choice(config: dict, chosen: dict) -> dict:
    """``config`` (an NPoE run) in the regime and at the β of the ``chosen`` candidate."""
    return with_regime(with_beta(config, chosen["poe"]["beta"]), regime_of(chosen))


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
              rdrop_alpha: float = 15.0, train_experts: bool | None = None, gate_mask: str = "inf",
              double_softmax: bool = False, pretrain_epochs: int | None = None, gate_on: str = "text",
              figures=ALL_FIGURES, executor: str | None = None, force: bool = False,
              pretrain_schedule: str = "authors", pretrain_labels: str = "authors", pretrain_source: str = "attacked",
              expert_mode: str = "eval", freeze_main_iters: int = 0, lr: float | None = None,
              small_lr: float | None = None, dpoe_small_lr: float | None = None, dpoe_layers: int | None = None,
              dpoe_rdrop_alpha: float | None = None, regime: str | None = None) -> NPoEGrid:
    """Check the page's parameters (the first wrong one raises :class:`ParameterError`, before
    any work) and build every configuration the page runs. The parameters are the page's
    (``notebooks/npoe.md``); None takes the profile's value.

    The six points on which the chapter first differed from the authors' code are each one
    parameter, whose default is the authors' choice (``notebooks/npoe.config.yaml``;
    :data:`differences.DIFFERENCES`, and :func:`differences.ours_before` for the values of
    before): NPoE's ``pretrain_schedule``, ``pretrain_epochs``, ``pretrain_labels``,
    ``pretrain_source`` (the experts' pre-training), ``expert_mode`` (NPoE's and DPoE's experts and
    gate with or without dropout), ``freeze_main_iters`` (NPoE), the learning rates ``lr`` (every
    trained method's main model) and ``dpoe_small_lr``, and DPoE's shallow model, ``dpoe_layers``
    and ``dpoe_rdrop_alpha`` (None: the profile's). NPoE's ``regime`` (:data:`config.REGIMES`:
    the experts' rate ``small_lr`` and whether they train jointly, ``train_experts``) is chosen
    with β by the pseudo-dev rule among the profile's regimes unless named; ``small_lr`` and
    ``train_experts`` given by hand hold in every regime."""
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
    train_experts = None if train_experts is None else check_bool("train_experts", train_experts)
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
    dpoe_rdrop_alpha = None if dpoe_rdrop_alpha is None else \
        check_positive("dpoe_rdrop_alpha", dpoe_rdrop_alpha, allow_zero=True)
    figures = check_choices("figures", figures, FIGURES) if figures else []
    check_bool("force", force)
    check_choice("executor", executor, [None, *EXECUTORS])
    seeds = check_list("seeds", seeds, check_int) or list(p["seeds"])
    if encoder is not None:  # before any run: a name that cannot load fails now, not after minutes
        check_model_name("encoder", encoder, OFFLINE_ENCODERS)
    given = lambda **kw: {k: v for k, v in kw.items() if v is not None}
    overrides = given(encoder=encoder, n_train=n_train, epochs=epochs, lr=lr)
    # NPoE's regimes (experts' rate, joint training): the profile's candidates, one named, or the
    # values given (which hold in every regime)
    names = p["regimes"] if regime is None else [check_choice("regime", regime, REGIMES)]
    regimes = []
    for name in names:
        fixed = given(small_lr=small_lr, train_experts=train_experts)
        r = {"name": "as given" if len(fixed) == 2 else name, **REGIMES[name]} | fixed
        if not any(r["small_lr"] == q["small_lr"] and r["train_experts"] == q["train_experts"] for q in regimes):
            regimes.append(r)
    # DPoE's shallow model: the profile's (the authors' at quick and paper) unless given
    dpoe_layers = p["dpoe"]["layers"] if dpoe_layers is None else dpoe_layers
    dpoe_rdrop_alpha = (p["dpoe"]["rdrop_alpha"] if p["dpoe"]["rdrop_alpha"] is not None else rdrop_alpha) \
        if dpoe_rdrop_alpha is None else dpoe_rdrop_alpha
    # issue 26's settings: PoE and the experts' settings hold them only where they differ from ours before
    poe_params = dict(beta=beta or 1.0, rdrop_alpha=rdrop_alpha, gate_mask=gate_mask, expert_mode=expert_mode)
    npoe_poe = poe_params | dict(train_experts=regimes[0]["train_experts"], freeze_main_iters=freeze_main_iters)
    npoe_experts = dict(double_softmax=double_softmax, gate_on=gate_on, pretrain_schedule=pretrain_schedule,
                        pretrain_labels=pretrain_labels, pretrain_source=pretrain_source) \
        | given(pretrain_epochs=pretrain_epochs)
    runnable, skipped = runnable_settings(datasets, settings)
    method_params = {"npoe": dict(poe_params=npoe_poe, expert_params=npoe_experts, small_lr=regimes[0]["small_lr"]),
                     "dpoe": dict(poe_params=poe_params | dict(rdrop_alpha=dpoe_rdrop_alpha),
                                  expert_params=dict(layers=dpoe_layers) | given(pretrain_epochs=pretrain_epochs),
                                  **given(small_lr=dpoe_small_lr))}
    table = [run_config(profile, ds, setting, m, seed, style=style_name, **method_params.get(m, {}), **overrides)
             for ds, setting in runnable for m in (mix4_methods if setting == "mix4" else methods) for seed in seeds]
    betas = None if beta is None else [beta]
    # NPoE's choice, once, on the first seed: every regime at every β; the other seeds train it
    candidates = {(c["dataset"], c["setting"], c["seed"]):
                  [k for r in regimes for k in selection_configs(with_regime(c, r), betas)]
                  for c in table if c["method"] == "npoe" and c["seed"] == seeds[0]}
    fig_dataset, fig_setting = runnable[0] if runnable else ("sst2", "mix3")
    figure_args = dict(figures=figures, style=style_name, poe_params=npoe_poe, expert_params=npoe_experts,
                       overrides={k: v for k, v in overrides.items() if k in ("encoder", "lr")})
    checked = dict(datasets=datasets, settings=settings, mix4_methods=mix4_methods, beta=beta,
                   rdrop_alpha=rdrop_alpha, pretrain_epochs=pretrain_epochs, figures=figures, seeds=seeds,
                   dpoe_rdrop_alpha=dpoe_rdrop_alpha, dpoe_layers=dpoe_layers,
                   regime=regimes[0]["name"] if len(regimes) == 1 else None)
    grid = NPoEGrid(profile, runnable, skipped, table, candidates, {}, fig_dataset, fig_setting, seeds,
                    select_rule, betas, executor, force, checked, regimes, figure_args)
    grid.figures = grid.figures_for(regimes[0])
    return grid


def with_regime(config: dict, regime: dict) -> dict:
    """An NPoE configuration in ``regime``."""
    return config | {"recipe": config["recipe"] | {"small_lr": regime["small_lr"]},
                     "poe": config["poe"] | {"train_experts": regime["train_experts"]}}


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
    def n_runs(self) -> int:
        return len({r.path.name for r in self.page_runs})

    @property
    def select_n_train(self) -> int | None:
        """The training sentences of NPoE's β candidates (None: all; also when there are none)."""
        return next(iter(self.selections.values()))[0][0].config["n_train"] if self.selections else None


def npoe_results(grid: NPoEGrid, cache: RunCache | None = None) -> NPoEResults:
    """Train (or load) the page's runs: one sweep over all that is known up front (what they
    need first, :func:`config.requires`), then NPoE in the regime and at the β its pseudo-dev
    rule chooses (``grid.select_rule``) on the first seed, for every seed, and the figures in
    that regime."""
    cache = cache or RunCache()
    kwargs = dict(force=grid.force, desc="NPoE runs", label=run_label, executor=grid.executor, requires=requires)
    groups = grid.groups()
    loaded = cache.sweep_groups(groups, run, **kwargs)
    by_hash = {config_hash(c): r for name, cs in groups.items() for c, r in zip(cs, loaded[name])}
    cands = {key: [by_hash[config_hash(c)] for c in cs] for key, cs in grid.candidates.items()}
    chosen = {key: poe.select_by_pseudo_dev([r.metrics["pseudo_dev"] for r in rs], key[0], grid.select_rule)
              for key, rs in cands.items()}  # (dataset, setting, first seed) -> the chosen candidate's index
    finals = [with_choice(c, grid.candidates[c["dataset"], c["setting"], grid.seeds[0]]
                          [chosen[c["dataset"], c["setting"], grid.seeds[0]]])
              for c in grid.table if c["method"] == "npoe"]
    figures = grid.figures if len(grid.regimes) <= 1 or not chosen else \
        grid.figures_for(regime_of(grid.candidates[next(iter(chosen))][next(iter(chosen.values()))]))
    later = {"finals": [c for c in finals if config_hash(c) not in by_hash],
             **({} if figures is grid.figures else figures)}
    by_hash |= {config_hash(c): r for name, rs in cache.sweep_groups(later, run, **kwargs).items()
                for c, r in zip(later[name], rs)} if any(later.values()) else {}
    finals_by_key = {(c["dataset"], c["setting"], c["seed"]): by_hash[config_hash(c)] for c in finals}
    selections = {key: (cands[key], k, finals_by_key[key]) for key, k in chosen.items()}
    table_runs = [finals_by_key[c["dataset"], c["setting"], c["seed"]] if c["method"] == "npoe"
                  else by_hash[config_hash(c)] for c in grid.table]
    fig_runs = {f: [by_hash[config_hash(c)] for c in cs] for f, cs in figures.items()}
    used = table_runs + [r for cs in cands.values() for r in cs] + [r for rs in fig_runs.values() for r in rs]
    page_runs = used + [cache.load(d) for r in used for d in requires(r.config)]
    return NPoEResults(table_runs, selections, fig_runs, page_runs, npoe_paper.results_table(table_runs),
                       {f: npoe_paper.sensitivity_table(rs, f) for f, rs in fig_runs.items()})
