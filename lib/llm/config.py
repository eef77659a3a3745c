"""Chapter 4's configurations: the profiles, one run's full configuration, and the run graph.

A configuration is one of these kinds (:func:`kind`), each a run of the cache:

- ``attack``: the base model fine-tuned on BackdoorLLM's poisoned mix (``method="no_defense"``);
- ``reevaluation``: an attack's model evaluated with another template (``eval_template``);
- ``defense``: one method of :data:`METHODS_ALL` applied to an attack's model;
- ``clean_adapter``: the base model fine-tuned on the clean records alone (once per task);
- ``clean_model``: that model evaluated on one attack's prompts (the floor of ASR);
- ``analysis``: a figure's analysis of a Locphylax run, ``{"chapter", "analysis", "of"}``.

:func:`requires` says which runs a configuration needs (a defense its attack; clean fine-tuning,
CROW and stage 2 alone also the Locphylax run whose steps set their budget), so that a sweep
trains them first and hands them to the run. A LoRA configuration keeps the keys it was cached
under: ``finetune`` enters only when it is ``"full"``.

>>> c = run_config("smoke", "sst2", "badnet", "clean_finetune")
>>> [kind(d) for d in requires(c)]
['attack', 'defense']
"""
from __future__ import annotations

from .. import profiles
from ..params import ParameterError, check_choice, check_fraction, check_int, check_optional_int, check_positive
from . import crow, data, judge, locphylax, models
from .evaluation import ANSWER_TOKENS
from .training import HIDDEN_POSITIONS, Recipe
from .triggers import ATTACK_STRINGS, Trigger

SCHEMA = 2  # 2: cheaper LoRA dropout masks (other random draws), inference in the training precision
DEFENSES = ("locphylax", "clean_finetune", "pruning", "crow")
ABLATIONS = ("locphylax_no_cluster", "locphylax_one_trigger", "locphylax_stage2_only")
METHODS = ("no_defense",) + DEFENSES + ABLATIONS  # the chapter's table
# a variant outside the profiles' default list: the known triggers answer class labels
VARIANTS = ("locphylax_label_targets",)
METHODS_ALL = METHODS + VARIANTS
# the methods trained for the number of steps Locphylax took (its run is their dependency)
BUDGETED = ("clean_finetune", "crow", "locphylax_stage2_only")
# what the known triggers answer: the fixed sentences of ``locphylax.KNOWN_TRIGGERS``, or a class
# label each (classification tasks; the labels taken in turn, so the triggers cover every label)
KNOWN_TARGETS = ("answers", "labels")
# what runs on the attacks outside a profile's ``full_attacks`` (the costly CROW and the ablations do not)
CORE_METHODS = ("no_defense", "locphylax", "clean_finetune", "pruning")
ANALYSES = ("aggregation", "critical_layers")  # the figures' analyses of a Locphylax run
# stage 1's batches: drawn at random from the whole set (the default), or "stratified": every batch
# holds clean, t1 and t2 rows in the set's proportions (training.stratified_batches)
STAGE1_BATCHES = ("random", "stratified")
# the aggregation figure's states: the last prompt token's final-layer state (the default), or the
# state the run's clustering loss acts on (its ``cluster_token``, unit length when it normalizes)
AGGREGATION_STATES = ("prompt_end", "clustered")

PROFILES = {
    # every code path in about a minute; numbers are not meaningful
    "smoke": {"model": models.DEFAULT_MODEL, "layers": 2, "tasks": ["sst2"], "attacks": ["badnet"], "seeds": (0,),
              "full_attacks": ["badnet"],
              "n_poison": 8, "n_clean": 8, "recipe": dict(epochs=1, batch_size=8, lr=2e-4, max_length=96),
              "n_test": 8, "defense": dict(n_clean=8, n_known=4, n_val=4, stage1_max_epochs=1, stage2_max_epochs=2,
                                           lr=2e-4),
              "figure_n": 6, "track_every": 2,
              "crow_layers": "all",  # 2 decoder layers: DefenseBox's pairs leave none
              "critical_heads": 2},  # the per-head diagnostic on the first 2 heads (every head elsewhere)
    # this 2-core CPU: SmolLM2-135M, SST-2, two attacks, a part of the training sets, 2 epochs
    "quick": {"model": models.DEFAULT_MODEL, "layers": None, "tasks": ["sst2"], "attacks": ["badnet", "vpi"],
              "full_attacks": ["badnet"], "seeds": (0, 1, 2),
              "n_poison": 150, "n_clean": 150, "recipe": dict(epochs=2, batch_size=8, lr=2e-4, max_length=256),
              "n_test": None, "defense": dict(n_clean=100, n_known=60, n_val=24, stage1_max_epochs=4, stage2_max_epochs=3,
                                              lr=2e-4),
              "figure_n": 24, "track_every": 10, "crow_layers": "defensebox"},
    # the paper's scale, for a GPU: a 7-8B instruct model, BackdoorLLM's full sets and recipe
    "paper": {"model": "meta-llama/Meta-Llama-3-8B-Instruct", "layers": None,
              "tasks": ["sst2", "refusal", "negsentiment"], "attacks": list(data.ATTACKS), "full_attacks": None,
              "seeds": (0, 1, 2),
              "n_poison": None, "n_clean": None, "recipe": dict(epochs=5, batch_size=8, lr=2e-4, max_length=512),
              "n_test": None, "defense": dict(n_clean=200, n_known=100, n_val=50, stage1_max_epochs=5,
                                              stage2_max_epochs=5, lr=2e-4),
              "figure_n": 200, "track_every": 20, "crow_layers": "defensebox"},
}


def profile(name: str) -> dict:
    return profiles.lookup(PROFILES, name)


def check_attack(attack):
    """A BackdoorLLM attack name, or a custom trigger ``{"phrase": …, "placement": …}``."""
    if isinstance(attack, dict):
        unknown = set(attack) - {"phrase", "placement"}
        if unknown:
            raise ParameterError("attack", "a name or {'phrase', 'placement'}", attack)
        return Trigger(**attack).as_dict()
    return data.check_attack(attack)


def attack_label(attack) -> str:
    return attack if isinstance(attack, str) else f"custom '{attack['phrase']}' ({attack['placement']})"


def run_config(profile_name: str, task: str, attack, method: str = "no_defense", seed: int = 0,
               template: str = "chat", eval_template: str | None = None, defense_params: dict | None = None,
               **overrides) -> dict:
    """The full configuration of one run; its hash names the run's cache directory.

    ``overrides``: ``model``, ``layers``, ``n_poison``, ``n_clean``, ``epochs``, ``lr``, ``finetune``
    (the attack's: ``"lora"`` or ``"full"``, at ``models.FULL_LR`` unless ``lr`` is given; the defenses'
    is ``defense_params["finetune"]``, likewise), ``answer_tokens`` (new tokens per evaluated answer;
    default ``evaluation.ANSWER_TOKENS[task]``). ``finetune`` enters a configuration only when it is
    ``"full"``, ``answer_tokens`` only when it differs from the task's default, so that the runs
    keep the keys they were cached under.
    ``eval_template`` (default: ``template``) evaluates with another template, to show a mismatch."""
    p = profile(profile_name)
    data.check_task(task)
    attack = check_attack(attack)
    check_choice("method", method, METHODS_ALL + ("clean_model",))
    models.check_template(template)
    models.check_template(eval_template or template)
    unknown = set(overrides) - {"model", "layers", "n_poison", "n_clean", "epochs", "lr", "finetune", "answer_tokens"}
    if unknown:
        raise ParameterError("overrides", "model, layers, n_poison, n_clean, epochs, lr, finetune or answer_tokens",
                             sorted(unknown))
    attack_mode = check_choice("finetune", overrides.get("finetune", "lora"), models.FINETUNE)
    check_int("seed", seed)
    recipe = dict(p["recipe"])
    if "epochs" in overrides:
        recipe["epochs"] = check_int("epochs", overrides["epochs"], 1)
    if attack_mode == "full":
        recipe["lr"] = models.FULL_LR
    if "lr" in overrides:
        recipe["lr"] = check_positive("lr", overrides["lr"])
    config = {
        "schema": SCHEMA, "chapter": "locphylax", "profile": profile_name, "task": task, "attack": attack,
        "seed": seed, "model": overrides.get("model", p["model"]),
        "layers": check_optional_int("layers", overrides.get("layers", p["layers"]), 1),
        "template": template, "eval_template": eval_template or template,
        "n_poison": check_optional_int("n_poison", overrides.get("n_poison", p["n_poison"]), 1),
        "n_clean": check_optional_int("n_clean", overrides.get("n_clean", p["n_clean"]), 0),
        "recipe": Recipe(**recipe).as_dict(), "n_test": p["n_test"], "method": "no_defense",
    }
    if attack_mode == "full":
        config["finetune"] = attack_mode
    n_new = check_int("answer_tokens", overrides.get("answer_tokens", ANSWER_TOKENS[task]), 1)
    if n_new != ANSWER_TOKENS[task]:
        config["answer_tokens"] = n_new
    if method == "clean_model":
        config["method"] = "clean_model"
    elif method != "no_defense":
        config.update(method=method, defense=defense_settings(p, task, attack, method, defense_params))
    return config


def defense_settings(p: dict, task: str, attack, method: str, defense_params: dict | None) -> dict:
    """A defense's settings: the profile's, the book's choices, then ``defense_params``, checked."""
    d = dict(p["defense"], known=[list(k) for k in locphylax.KNOWN_TRIGGERS], cross=True,
             sparsity=0.5, prune="wanda", crow=dict(crow.DEFAULTS), track_every=p["track_every"],
             normalize=True, cluster_token="answer_end", inject_threshold=90.0, known_threshold=5.0,
             known_targets="answers",
             track_methods=["locphylax", "clean_finetune"])
    d.update(defense_params or {})
    if check_choice("finetune", d.pop("finetune", "lora"), models.FINETUNE) == "full":
        d["finetune"] = "full"
        if "lr" not in (defense_params or {}):
            d["lr"] = models.FULL_LR
    check_positive("lr", d["lr"])
    if method == "locphylax_label_targets":  # the variant's one difference, whatever the page asks
        d["known_targets"] = "labels"
    check_choice("known_targets", d["known_targets"], KNOWN_TARGETS)
    if d["known_targets"] == "labels" and task not in judge.TASK_LABELS:
        raise ParameterError("known_targets", f"'answers' on {task} (it has no class labels)", "labels")
    check_fraction("sparsity", d["sparsity"])
    check_choice("cluster_token", d["cluster_token"], HIDDEN_POSITIONS)
    # options that enter the settings only when they differ from the default (the cached runs keep their keys)
    if check_choice("stage1_batches", d.pop("stage1_batches", "random"), STAGE1_BATCHES) != "random":
        d["stage1_batches"] = "stratified"
    if d.get("stage1_steps") is None:
        d.pop("stage1_steps", None)
    else:
        check_int("stage1_steps", d["stage1_steps"], 1)
    for key in ("n_clean", "n_known", "n_val", "stage1_max_epochs", "stage2_max_epochs"):
        check_int(key, d[key], 1)
    for phrase, placement, _ in d["known"]:
        Trigger(phrase, placement)
        if shares_trigger(phrase, attack):
            raise ParameterError("known triggers", "phrases that are not the attack's trigger", phrase)
    return d


def shares_trigger(phrase: str, attack) -> bool:
    strings = ATTACK_STRINGS[attack] if isinstance(attack, str) else (attack["phrase"],)
    return any(s in phrase or phrase in s for s in strings)


# --- the run graph -----------------------------------------------------------------------------

def attack_config(config: dict) -> dict:
    """The attack run a defense starts from (or a re-evaluation reads)."""
    return {k: v for k, v in config.items() if k != "defense"} | {"method": "no_defense",
                                                                   "eval_template": config["template"]}


def budget_config(config: dict) -> dict:
    """The Locphylax run whose ``steps_used`` is the budget of a :data:`BUDGETED` method."""
    return dict(config, method="locphylax")


def clean_adapter_config(config: dict) -> dict:
    """The clean model a floor run evaluates: trained once per task, whatever the attack."""
    return {k: v for k, v in config.items() if k not in ("attack", "eval_template", "answer_tokens")} | {
        "method": "clean_model_adapter"}


def analysis_config(kind_: str, config: dict, state: str = "prompt_end") -> dict:
    """A figure's analysis (one of :data:`ANALYSES`) of the Locphylax run ``config``; ``state``
    (aggregation only, one of :data:`AGGREGATION_STATES`) enters it only when not the default."""
    check_choice("analysis", kind_, ANALYSES)
    check_choice("aggregation_state", state, AGGREGATION_STATES)
    out = {"chapter": "locphylax", "analysis": kind_, "of": config}
    if kind_ == "aggregation" and state != "prompt_end":
        out["state"] = state
    return out


def kind(config: dict) -> str:
    """Which kind of run a configuration is (see the module's docstring)."""
    if "analysis" in config:
        return "analysis"
    method = config["method"]
    if method == "no_defense":
        return "reevaluation" if config["eval_template"] != config["template"] else "attack"
    if method in ("clean_model", "clean_model_adapter"):
        return {"clean_model": "clean_model", "clean_model_adapter": "clean_adapter"}[method]
    return "defense"


def requires(config: dict) -> list[dict]:
    """The runs ``config`` needs, in the order its run function receives them."""
    k = kind(config)
    if k == "analysis":
        return [config["of"], attack_config(config["of"])]
    if k == "clean_model":
        return [clean_adapter_config(config)]
    if k == "reevaluation":
        return [attack_config(config)]
    if k == "defense":
        return [attack_config(config)] + ([budget_config(config)] if config["method"] in BUDGETED else [])
    return []


def run_label(config: dict) -> str:
    """How progress reports name a run, of any kind."""
    if "analysis" in config:
        return f"{config['analysis'].replace('_', ' ')} of {run_label(config['of'])}"
    if config["method"] == "clean_model_adapter":
        return f"{config['task']} clean model seed {config['seed']}"
    method = config["method"]
    if kind(config) == "reevaluation":
        method = f"no_defense ({config['eval_template']} template)"
    return f"{config['task']} {attack_label(config['attack'])} {method} seed {config['seed']}"


def figure_n(config: dict) -> int:
    """How many test prompts a figure's measurement uses at the run's profile."""
    return PROFILES[config["profile"]]["figure_n"]


def critical_heads(config: dict, n_heads: int) -> range:
    """The heads of the critical layer the per-head diagnostic measures at the run's profile."""
    return range(min(n_heads, PROFILES[config["profile"]].get("critical_heads") or n_heads))
