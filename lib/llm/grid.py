"""Chapter 4's page as one grid of runs: every page parameter checked, the runs in named groups.

:func:`locphylax_grid` takes the page's parameters (the names, defaults and meanings of
``notebooks/locphylax.md``'s parameters cell), checks every one before any work (a
:class:`~moebackdoor.params.ParameterError` naming it), and returns a :class:`LocphylaxGrid`:

- ``main``: the table's runs, every method on the attacks of ``full_attacks``, the core methods
  (:data:`~moebackdoor.llm.config.CORE_METHODS`) on the others, for every seed;
- ``floor``: the clean model evaluated on each attack's prompts (the first seed);
- ``mismatch``: the undefended model evaluated with ``mismatch_template``;
- ``aggregation``, ``critical_layers``: the figures' analyses of the first Locphylax run;
- ``asr_steps``: the runs whose ASR through the steps the third figure draws.

:func:`moebackdoor.llm.runs.run_grid` runs them all in one sweep.

>>> grid = locphylax_grid("smoke", methods=["no_defense", "locphylax"])
>>> [len(c) for c in grid.groups().values()]
[2, 1, 1, 1, 1, 2]
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..executors import EXECUTORS
from ..params import ParameterError, check_bool, check_choice, check_choices, check_fraction, check_int, check_list
from ..pretrained import OFFLINE_LMS, check_model_name
from . import crow, data, models, pruning as prune_kinds
from .config import (AGGREGATION_STATES, CORE_METHODS, KNOWN_TARGETS, METHODS, METHODS_ALL, STAGE1_BATCHES,
                     analysis_config, check_attack, profile, run_config)
from .locphylax_paper import FIGURES
from .training import HIDDEN_POSITIONS
from .triggers import Trigger

CLUSTER_STATES = ("unit", "raw")  # the clustering loss on unit-length final states, or raw ones
# the methods that run every seed of the profile (notebooks/locphylax.config.yaml); the others its first
SEEDED_METHODS = ("no_defense", "locphylax", "clean_finetune")
# the page before issue 27's configuration: the clustering loss on the answer's end state, stage 1
# in random batches (each one parameter; with ``seeds=[seed]`` the cache keys are those of before)
OURS_BEFORE = dict(cluster_token="answer_end", stage1_batches="random", pruning="wanda", crow_layers="all")


@dataclass
class LocphylaxGrid:
    """The page's runs by group (see the module's docstring), and the settings they came from."""
    parameters: dict  # the page's parameters as resolved (the profile's values where None was given)
    main: list[dict]
    floor: list[dict]
    mismatch: list[dict]
    aggregation: list[dict] = field(default_factory=list)
    critical_layers: list[dict] = field(default_factory=list)
    asr_steps: list[dict] = field(default_factory=list)

    GROUPS = ("main", "floor", "mismatch", "aggregation", "critical_layers", "asr_steps")

    def groups(self) -> dict[str, list[dict]]:
        return {name: getattr(self, name) for name in self.GROUPS}

    def __getattr__(self, name):  # the resolved parameters: grid.seeds, grid.template, ...
        if name != "parameters" and name in self.__dict__.get("parameters", {}):
            return self.parameters[name]
        raise AttributeError(name)

    @property
    def locphylax(self) -> dict | None:
        """The Locphylax run the figures analyse (the first of the table's), if any."""
        return next((c for c in self.main if c["method"] == "locphylax"), None)

    @property
    def defense(self) -> dict:
        """The defense settings of the table's runs (the profile's when no defense runs)."""
        return next((c["defense"] for c in self.main if "defense" in c), profile(self.profile)["defense"])


def check_known_triggers(known_triggers):
    """``None`` (the book's) or two ``[phrase, placement, target answer]`` triples."""
    if known_triggers is None:
        return None
    if not isinstance(known_triggers, (list, tuple)) or len(known_triggers) != 2 or \
            any(not isinstance(k, (list, tuple)) or len(k) != 3 for k in known_triggers):
        raise ParameterError("known_triggers", "two [phrase, placement, target answer] triples", known_triggers)
    for phrase, placement, _ in known_triggers:
        Trigger(phrase, placement)
    return [list(k) for k in known_triggers]


def locphylax_grid(profile_name: str = "quick", tasks=None, attacks=None, custom_trigger=None, methods=METHODS,
                   full_attacks=None, template: str = "chat", mismatch_template: str | None = "raw", model=None,
                   n_poison=None, epochs=None, attack_finetune: str = "lora", defense_finetune: str = "lora",
                   known_triggers=None, known_targets: str = "answers", cluster_states: str = "unit",
                   cluster_token: str = "prompt_end", sparsity: float = 0.5, figures=FIGURES, seed: int = 0,
                   seeds=None, executor=None, force: bool = False, answer_tokens=None,
                   stage1_batches: str = "stratified", stage1_steps=None,
                   aggregation_state: str = "prompt_end", pruning: str = "wanda_layerwise",
                   crow_layers: str | None = None) -> LocphylaxGrid:
    """The page's runs for its parameters (``notebooks/locphylax.md`` says what each accepts),
    every parameter checked first.

    Beyond the page's parameters (each key-preserving at its default: a run's configuration holds
    it only when it differs): ``answer_tokens``, new tokens per evaluated answer (None: the task's,
    ``evaluation.ANSWER_TOKENS``); ``stage1_batches``, ``"random"`` or ``"stratified"`` (each stage-1
    batch holds clean, t1 and t2 rows); ``stage1_steps``, stage 1 run for exactly this many steps
    instead of its stopping rule (None; the budgeted baselines follow Locphylax's total);
    ``aggregation_state``, the aggregation figure's states (``config.AGGREGATION_STATES``);
    ``pruning``, the pruning baseline's kind (:data:`pruning.KINDS`: ``"wanda_layerwise"``, as
    locuslab/wanda's ``prune_wanda``; ``"wanda"``, every layer measured on the unpruned model)."""
    prof = profile(profile_name)
    tasks = prof["tasks"] if tasks is None else check_choices("tasks", tasks, data.TASKS)
    attacks = prof["attacks"] if attacks is None else check_choices("attacks", attacks, data.ATTACKS)
    if custom_trigger is not None:
        attacks = list(attacks) + [check_attack(custom_trigger)]
    methods = check_choices("methods", methods, METHODS_ALL)
    full_attacks = prof["full_attacks"] if full_attacks is None else \
        check_choices("full_attacks", full_attacks, data.ATTACKS)
    models.check_template(template)
    if mismatch_template is not None:
        models.check_template(mismatch_template)
    check_fraction("sparsity", sparsity)
    figures = check_choices("figures", figures, FIGURES) if figures else []
    check_int("seed", seed)
    given_seeds = check_list("seeds", seeds, check_int)
    # seeds None: the profile's seeds (offset by ``seed``) for the methods written down for
    # several (SEEDED_METHODS), ``seed`` alone for the others; a list: every method at each
    seeds = given_seeds or [seed + s for s in prof["seeds"]]
    if len(set(seeds)) != len(seeds):
        raise ParameterError("seeds", "distinct integers", seeds)
    seeds_of = (lambda m: seeds) if given_seeds else (lambda m: seeds if m in SEEDED_METHODS else seeds[:1])
    check_bool("force", force)
    check_choice("executor", executor, [None, *EXECUTORS])
    check_choice("cluster_states", cluster_states, list(CLUSTER_STATES))
    check_choice("cluster_token", cluster_token, list(HIDDEN_POSITIONS))
    check_choice("attack_finetune", attack_finetune, models.FINETUNE)
    check_choice("defense_finetune", defense_finetune, models.FINETUNE)
    check_choice("stage1_batches", stage1_batches, list(STAGE1_BATCHES))
    check_choice("aggregation_state", aggregation_state, list(AGGREGATION_STATES))
    check_choice("pruning", pruning, list(prune_kinds.KINDS))
    crow_layers = prof["crow_layers"] if crow_layers is None else check_choice("crow_layers", crow_layers,
                                                                               list(crow.LAYERS))
    if stage1_steps is not None:
        check_int("stage1_steps", stage1_steps, 1)
    if answer_tokens is not None:
        check_int("answer_tokens", answer_tokens, 1)
    defense_params = {"sparsity": sparsity, "normalize": cluster_states == "unit", "cluster_token": cluster_token,
                      "finetune": defense_finetune, "stage1_batches": stage1_batches, "stage1_steps": stage1_steps,
                      "known_targets": check_choice("known_targets", known_targets, KNOWN_TARGETS)}
    known = check_known_triggers(known_triggers)
    if known is not None:
        defense_params["known"] = known
    if model is not None:  # before any run: a name that cannot load fails now, not after minutes
        check_model_name("model", model, OFFLINE_LMS)
    overrides = {k: v for k, v in dict(model=model, n_poison=n_poison, epochs=epochs, finetune=attack_finetune,
                                       answer_tokens=answer_tokens).items() if v is not None}

    def full(attack) -> bool:  # does this attack get every method?
        return full_attacks is None or not isinstance(attack, str) or attack in full_attacks

    params_of = {"no_defense": None, "pruning": defense_params | {"prune": pruning}}
    if crow_layers != "all":  # "all", the book before, keeps the runs' keys of before
        params_of["crow"] = defense_params | {"crow": dict(crow.DEFAULTS, layers=crow_layers)}
    main = [run_config(profile_name, task, attack, m, s, template,
                       defense_params=params_of.get(m, defense_params), **overrides)
            for task in tasks for attack in attacks for m in methods if full(attack) or m in CORE_METHODS
            for s in seeds_of(m)]
    seed = seeds[0]  # the floor, the template check and the figures use the first seed
    pairs = [(task, attack) for task in tasks for attack in attacks]
    floor = [run_config(profile_name, task, attack, "clean_model", seed, template, **overrides) for task, attack in pairs]
    mismatch = [] if mismatch_template is None or mismatch_template == template else [
        run_config(profile_name, task, attack, "no_defense", seed, template, eval_template=mismatch_template, **overrides)
        for task, attack in pairs]
    parameters = dict(profile=profile_name, tasks=tasks, attacks=attacks, custom_trigger=custom_trigger,
                      methods=methods, full_attacks=full_attacks, template=template,
                      mismatch_template=mismatch_template, model=model, n_poison=n_poison, epochs=epochs,
                      attack_finetune=attack_finetune, defense_finetune=defense_finetune,
                      known_triggers=known_triggers, known_targets=known_targets, cluster_states=cluster_states,
                      cluster_token=cluster_token, sparsity=sparsity, figures=figures, seed=seed, seeds=seeds,
                      executor=executor, force=force, answer_tokens=answer_tokens, stage1_batches=stage1_batches,
                      stage1_steps=stage1_steps, aggregation_state=aggregation_state, pruning=pruning,
                      crow_layers=crow_layers)
    grid = LocphylaxGrid(parameters, main, floor, mismatch)
    loc = grid.locphylax
    for kind, figure in (("aggregation", "locphylax-fig-aggregation"),
                         ("critical_layers", "locphylax-fig-critical-layers")):
        setattr(grid, kind, [analysis_config(kind, loc, aggregation_state if kind == "aggregation" else "prompt_end")]
                if loc and figure in figures else [])
    grid.asr_steps = [c for c in main if c["seed"] == seed] if "locphylax-fig-asr-steps" in figures else []
    return grid
