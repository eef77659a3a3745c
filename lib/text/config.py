"""Chapter 3's configurations: the profiles, one run's full configuration, and the runs one run
needs (its cache key is the hash of its configuration, :mod:`moebackdoor.runcache`).

A run trains a text classifier under one attack setting by one method (:func:`run_config`).
Besides the table's runs there are NPoE's β candidates (:func:`selection_configs`), the
sensitivity figures' runs (:func:`figure_configs`), an expert's pre-training
(:func:`expert_config`, a run of its own that NPoE runs share) and the No defense run that a
defense starts from (:func:`base_config`); :func:`requires` says which runs a run needs.

>>> c = run_config("smoke", "sst2", "mix4", "onion")
>>> requires(c) == [base_config(c)] and base_config(c)["method"] == "no_defense"
True
"""
from __future__ import annotations

from .. import profiles
from ..params import ParameterError, check_choice, check_int, check_optional_int, check_positive
from .data import SIZES, check_dataset, check_style, n_classes
from .models import DEFAULT_ENCODER
from .poisoning import PRETRAIN_LABELS, PRETRAIN_SOURCES, check_setting, setting_rates
from .training import PoE, Recipe, n_pretrain_batches

SCHEMA = 4  # bump when a change to the code invalidates cached runs
TRAINED = ("no_defense", "benign", "dpoe", "npoe")
# OpenBackdoor's defaults; ``n_test``: ONION's test sentences per set (its LM is slow on a CPU)
DEFENSE_PARAMS = {"onion": {"threshold": 0.0, "precision": "auto"}, "bki": {"top_k": 5, "n_keywords": 1},
                  "strip": {"repeat": 5, "swap_ratio": 0.5, "frr": 0.01},
                  "rap": {"rap_word": "cf", "epochs": 5, "lr": 1e-2, "prob_range": [-0.1, -0.3], "frr": 0.01}}
DEFENSES = tuple(DEFENSE_PARAMS)  # each one a function in :data:`defenses.DEFENDERS`
METHODS = TRAINED + DEFENSES
# the authors' expert pre-training order: expert b gets set b mod 4
EXPERT_ORDER = ("insertsent", "syntactic", "badnet", "style")
EXPERT_CHAPTER = "npoe-expert"  # an expert's pre-training run (:func:`expert_config`)
# NPoE's pseudo-dev rule: the authors' code (the primary source, on whose signals its thresholds
# were set; the paper's text could not be obtained), or "paper", the formula as summaries give it
SELECT_RULE = "code"
# what NPoE's gate reads: the text (its own shallow encoder, the paper) or the main model's
# [CLS] state (the authors' --gate_on_hidden)
GATE_INPUTS = ("text", "hidden")
# an expert's pre-training learning rate: its own schedule (ours before), or the authors': their
# experts' schedulers are made with the joint run's warm-up before pre-training steps them
PRETRAIN_SCHEDULES = ("own", "authors")
# the experts' settings added after runs were cached, with the value that means "as before": a
# configuration holds one only where it differs (its cache key, and every cached run's, unchanged)
EXPERTS_ADDED = {"pretrain_schedule": "own", "pretrain_labels": "own", "pretrain_source": "own"}

PROFILES = {
    # every code path in about a minute; numbers are not meaningful
    "smoke": {"encoder": DEFAULT_ENCODER, "layers": 2, "n_train": 160, "n_test": 100, "max_length": 48,
              "recipe": dict(epochs=1, batch_size=16, lr=1e-4, small_lr=1e-4),
              "experts": dict(n=4, layers=1, gate_layers=1, pretrain_n=32, pretrain_steps=2, pretrain_epochs=None, gate_on="text", cls_only=True),
              "dpoe": dict(layers=1, rdrop_alpha=None), "regimes": ["example"],
              "onion_n_test": 8, "bki_n_score": None, "n_dev": 100, "seeds": (0,), "select_beta": [1.0, 2.0],
              "select_scale": None,
              "datasets": ["sst2"], "settings": ["mix4"],
              "figures": dict(n_train=None, epochs=None, expert_layers=[1, 2], gate_layers=[1, 2],
                              rate_scale=[1.0, 2.0])},
    # this 2-core CPU: MiniLM-L6, a subset of the training set, short sequences
    "quick": {"encoder": DEFAULT_ENCODER, "layers": None, "n_train": None, "n_test": None, "max_length": 64,
              # the authors' code (notebooks/npoe.config.yaml): main model at 2e-5; NPoE's experts and
              # gate at the rate of the regime its pseudo-dev rule chooses (:data:`REGIMES`), DPoE's
              # expert at DPoE's own (its run_train.sh)
              "recipe": dict(epochs=2, batch_size=16, lr=2e-5, small_lr=5e-4),
              "small_lr_by_method": {"dpoe": 8e-5},
              # a two-layer gate: the authors' code default (their example script uses one); one
              # pre-training epoch over the expert's 100 sentences (``--epoch_pretrain``'s default)
              "experts": dict(n=4, layers=1, gate_layers=2, pretrain_n=100, pretrain_steps=800, pretrain_epochs=1, gate_on="text", cls_only=True),
              "dpoe": dict(layers=3, rdrop_alpha=3.0), "regimes": ["code", "example"],
              "onion_n_test": 150, "bki_n_score": 2000, "n_dev": None, "seeds": (0, 1, 2), "select_beta": [1.0, 4.0, 8.0],
              # β is selected on runs at the figures' scale and the chosen β trained at the table's
              # (selecting among full runs picked the same β 4 in our one comparison, for 15 min more)
              "select_scale": dict(n_train=1500, epochs=2),
              "datasets": ["sst2"], "settings": ["mix3"],
              # the sensitivity figures: smaller runs, so that the four figures fit in the hour
              "figures": dict(n_train=1500, epochs=2, expert_layers=[1, 3], gate_layers=[1, 2],
                              rate_scale=[1.0, 2.0])},
    # the authors' setting (a GPU): BERT-base, all data, max length 256, 5 seeds
    "paper": {"encoder": "bert-base-uncased", "layers": None, "n_train": None, "n_test": None, "max_length": 256,
              "recipe": dict(epochs=3, batch_size=16, lr=2e-5, small_lr=2e-5), "small_lr_by_method": {"dpoe": 8e-5},
              "experts": dict(n=4, layers=1, gate_layers=1, pretrain_n=100, pretrain_steps=800, pretrain_epochs=1, gate_on="text", cls_only=True),
              "dpoe": dict(layers=3, rdrop_alpha=3.0), "regimes": ["code", "example"],
              "onion_n_test": None, "bki_n_score": None, "n_dev": None, "seeds": (0, 1, 2, 3, 4),
              "select_beta": [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0], "select_scale": None,
              "datasets": ["sst2", "offenseval", "trec", "hatespeech"],
              "settings": ["badnet", "insertsent", "syntactic", "style", "mix3", "mix4"],
              "figures": dict(n_train=None, epochs=None, expert_layers=[1, 2, 3, 4, 6], gate_layers=[1, 2, 3, 6], rate_scale=[1.0, 2.0])},
}
# where the authors' code and their example script disagree on NPoE's experts: the code's defaults
# (small_lr 5e-4, --freeze_bias_iters -1: experts kept as pre-trained) and the example's pairing
# (2e-5, experts trained jointly); the page's pseudo-dev rule chooses between them, with β
REGIMES = {"code": dict(small_lr=5e-4, train_experts=False), "example": dict(small_lr=2e-5, train_experts=True)}
OVERRIDES = ("encoder", "layers", "n_train", "max_length", "epochs", "lr", "small_lr")


def profile(name: str) -> dict:
    """Chapter 3's settings at profile ``name`` (a copy)."""
    return profiles.lookup(PROFILES, name)


def run_config(profile_name: str, dataset: str, setting: str, method: str, seed: int = 0, target: int = 1,
               style: str = "bible", rate_scale: float = 1.0, poe_params: dict | None = None,
               expert_params: dict | None = None, **overrides) -> dict:
    """The full configuration of one run; its hash names the run's cache directory.

    ``overrides``: ``encoder``, ``layers``, ``n_train``, ``max_length``, ``epochs``, ``lr``, ``small_lr``.
    ``poe_params`` override :class:`PoE` fields (``beta``, ``rdrop_alpha``, ``top_k``, ``train_experts``, ...);
    ``expert_params``: ``n``, ``layers``, ``gate_layers``, ``pretrain_n``, ``pretrain_steps``,
    ``pretrain_epochs`` (None: the recipe's epochs, as the authors' code), ``double_softmax``,
    ``gate_on`` (``"text"``, or ``"hidden"``: a linear gate on the main model's [CLS] state, where
    ``gate_layers`` only says whether there is a gate, as 0 does for DPoE), ``cls_only`` (the experts'
    and the text gate's last layer computes [CLS] alone, :func:`models.cls_only_last_layer`: the
    same logits for fewer FLOPs), and the pre-training options of issue 26 (each held only where it
    differs from ours before): ``pretrain_schedule`` (``"own"``, or ``"authors"``: at the joint
    run's warm-up, :func:`training.pretrain_expert`), ``pretrain_labels`` and ``pretrain_source``
    (:func:`poisoning.pretrain_set`). ``poe_params`` also take ``expert_mode`` (``"eval"``: experts
    and gate without dropout, the authors') and ``freeze_main_iters`` (:class:`training.PoE`).
    """
    p = profile(profile_name)
    check_dataset(dataset)
    check_setting(setting)
    check_choice("method", method, METHODS)
    check_style(style)
    unknown = set(overrides) - set(OVERRIDES)
    if unknown:
        raise ParameterError("overrides", "encoder, layers, n_train, max_length, epochs, lr or small_lr",
                             sorted(unknown))
    check_int("seed", seed)
    check_int("target", target, 0, n_classes(dataset) - 1)
    n_train = check_optional_int("n_train", overrides.get("n_train", p["n_train"]), 1, SIZES[dataset][0])
    n_train = None if n_train == SIZES[dataset][0] else n_train  # the whole set: one cache key, however asked
    recipe = dict(p["recipe"], epochs=check_int("epochs", overrides.get("epochs", p["recipe"]["epochs"]), 1),
                  max_length=check_int("max_length", overrides.get("max_length", p["max_length"]), 8))
    if method in p.get("small_lr_by_method", {}):  # the experts' and gate's rate, per method
        recipe["small_lr"] = p["small_lr_by_method"][method]
    for key in ("lr", "small_lr"):
        if key in overrides:
            recipe[key] = check_positive(key, overrides[key])
    rates = setting_rates(setting, rate_scale)
    config = {
        "schema": SCHEMA, "chapter": "npoe", "profile": profile_name, "dataset": dataset,
        "setting": setting, "rates": rates, "style": style, "target": target, "seed": seed,
        "method": method, "encoder": overrides.get("encoder", p["encoder"]),
        "layers": check_optional_int("layers", overrides.get("layers", p["layers"]), 1),
        "n_train": n_train, "n_test": p["n_test"], "recipe": Recipe(**recipe).as_dict(),
    }
    if method in ("dpoe", "npoe"):
        config["experts"] = expert_settings(p, method, expert_params)
        config["poe"] = PoE(**(poe_params or {})).as_dict()
    if method in DEFENSES:
        config["defense"] = defense_settings(p, method)
    return config


def expert_settings(p: dict, method: str, expert_params: dict | None) -> dict:
    """The experts and gate of a PoE run (profile ``p``), checked."""
    experts = {**p["experts"], "double_softmax": False, **(expert_params or {})}
    if method == "dpoe":  # one expert, no pre-training, no gate (DPoE's recipe, with R-drop)
        experts.update(n=1, pretrain_steps=0, gate_layers=0)
        for k in EXPERTS_ADDED:  # nothing to pre-train
            experts.pop(k, None)
    check_int("experts", experts["n"], 1)
    check_int("expert layers", experts["layers"], 1)
    check_choice("gate_on", experts["gate_on"], GATE_INPUTS)
    for key, choices in (("pretrain_schedule", PRETRAIN_SCHEDULES), ("pretrain_labels", PRETRAIN_LABELS),
                         ("pretrain_source", PRETRAIN_SOURCES)):
        check_choice(key, experts.get(key, EXPERTS_ADDED[key]), choices)
    return {k: v for k, v in experts.items() if k not in EXPERTS_ADDED or v != EXPERTS_ADDED[k]}


def defense_settings(p: dict, method: str) -> dict:
    """A defense's settings at profile ``p``: OpenBackdoor's defaults and the profile's sizes."""
    d = dict(DEFENSE_PARAMS[method])
    if method == "onion":
        d["n_test"] = p["onion_n_test"]
    if method == "bki" and p["bki_n_score"] is not None:
        d["n_score"] = p["bki_n_score"]
    if p["n_dev"] is not None:  # smoke: a part of the clean dev set fits the thresholds
        d["n_dev"] = p["n_dev"]
    return d


# the sensitivity figures: figure id -> the parameter varied
FIGURES = {"npoe-fig-beta": "beta", "npoe-fig-expert-depth": "expert_layers",
           "npoe-fig-gate-layers": "gate_layers", "npoe-fig-double-rate": "rate_scale"}


def figure_configs(profile_name: str, figure: str, dataset: str = "sst2", setting: str = "mix3", seed: int = 0,
                   values=None, style: str = "bible", poe_params: dict | None = None,
                   expert_params: dict | None = None, **overrides) -> list[dict]:
    """The runs of one sensitivity figure: NPoE at each value of its parameter (and No defense
    at each poison rate for the doubled-rate figure), at the profile's figure scale; the β
    figure is NPoE's selection sweep (:func:`selection_configs`), at its scale (``select_scale``).
    ``poe_params`` and ``expert_params`` are the table's NPoE settings; the figure's own
    parameter overrides them."""
    param = FIGURES[check_choice("figure", figure, FIGURES)]
    fig = profile(profile_name)["figures"]
    if param == "beta":  # the selection sweep itself
        table = run_config(profile_name, dataset, setting, "npoe", seed, style=style, poe_params=poe_params,
                           expert_params=expert_params, **overrides)
        return selection_configs(table, None if values is None else list(values))
    values = fig[param] if values is None else list(values)
    scale = {k: fig[k] for k in ("n_train", "epochs") if fig[k] is not None} | overrides
    small_lr = {"small_lr": scale.pop("small_lr")} if "small_lr" in scale else {}  # NPoE's experts' and gate's
    configs = []
    for v in values:
        poe_v, expert_v, rate = dict(poe_params or {}), dict(expert_params or {}), 1.0
        if param == "rate_scale":
            rate = check_positive("rate_scale", v)
        else:
            expert_v[{"expert_layers": "layers", "gate_layers": "gate_layers"}[param]] = check_int(param, v, 1)
        methods = ("no_defense", "npoe") if param == "rate_scale" else ("npoe",)
        configs += [run_config(profile_name, dataset, setting, m, seed, style=style, rate_scale=rate,
                               poe_params=poe_v if m == "npoe" else None,
                               expert_params=expert_v if m == "npoe" else None, **scale,
                               **(small_lr if m == "npoe" else {})) for m in methods]
    return configs


def with_beta(config: dict, beta: float) -> dict:
    return config | {"poe": config["poe"] | {"beta": check_positive("beta", beta)}}


def selection_configs(config: dict, betas=None) -> list[dict]:
    """NPoE's model selection: the same run at each β of the profile's grid (``select_beta``),
    at the profile's ``select_scale`` (training sentences, epochs) where it sets one."""
    p = profile(config["profile"])
    betas = p["select_beta"] if betas is None else betas
    scale = p["select_scale"] or {}
    if scale and len(betas) > 1:  # never more than the table's own runs
        n_train = min(scale["n_train"], config["n_train"] or SIZES[config["dataset"]][0])
        config = config | {"n_train": n_train,
                           "recipe": config["recipe"] | {"epochs": min(scale["epochs"], config["recipe"]["epochs"])}}
    return [with_beta(config, b) for b in betas]


def base_config(config: dict) -> dict:
    """The No defense run that a test-time defense (or BKI) starts from."""
    return {k: v for k, v in config.items() if k != "defense"} | {"method": "no_defense"}


def expert_config(config: dict, j: int) -> dict:
    """Expert ``j``'s pre-training as a run of its own (the cache key): what shapes its weights.
    β, the gate and the main model's training set do not, so a run's selection candidates, its
    chosen β and most figure runs share their pre-trained experts."""
    e = config["experts"]
    keys = ("layers", "cls_only", "double_softmax", "pretrain_n", "pretrain_steps", "pretrain_epochs")
    out = {"schema": SCHEMA, "chapter": EXPERT_CHAPTER, "encoder": config["encoder"], "dataset": config["dataset"],
           "style": config["style"], "seed": config["seed"], "expert": j,
           "trigger": EXPERT_ORDER[j % len(EXPERT_ORDER)], "recipe": config["recipe"]} | {k: e.get(k) for k in keys}
    out |= {k: e[k] for k in EXPERTS_ADDED if k in e}  # only where not ours before
    if e.get("pretrain_schedule") == "authors":  # the joint run's batches set the warm-up
        out["joint_steps"] = joint_steps(config)
    if e.get("pretrain_labels") == "authors":  # the triggered rows' label
        out["target"] = config["target"]
    return out


def joint_steps(config: dict) -> int:
    """The batches of a run's joint training as the authors' code counts them for its schedulers
    (``len(poison_train_data) * epoch // batch_size``)."""
    n = config["n_train"] or SIZES[config["dataset"]][0]
    return n * config["recipe"]["epochs"] // config["recipe"]["batch_size"]


def is_expert(config: dict) -> bool:
    return config.get("chapter") == EXPERT_CHAPTER


def requires(config: dict) -> list[dict]:
    """The runs ``config`` needs (the run graph of :meth:`RunCache.sweep`): a PoE run that
    pre-trains its experts needs their pre-training runs, a defense its No defense run."""
    if is_expert(config):
        return []
    if config["method"] in DEFENSES:
        return [base_config(config)]
    if "experts" in config and config["experts"]["pretrain_steps"]:
        return [expert_config(config, j) for j in range(config["experts"]["n"])]
    return []


def pretrain_batches(config: dict) -> int:
    """The batches each expert pre-trains for: the passes over its set, at most ``pretrain_steps``."""
    e, r = config["experts"], config["recipe"]
    if not e["pretrain_steps"]:
        return 0
    passes = r["epochs"] if e.get("pretrain_epochs") is None else e["pretrain_epochs"]
    return n_pretrain_batches(e["pretrain_n"], r["batch_size"], passes, e["pretrain_steps"])


def run_label(config: dict) -> str:
    """A run's name in progress reports, for every kind of run."""
    if is_expert(config):
        return f"{config['dataset']} expert {config['expert'] + 1} ({config['trigger']}) seed {config['seed']}"
    scale = sum(config["rates"].values())
    return f"{config['dataset']} {config['setting']} ({scale * 100:g}%) {config['method']} seed {config['seed']}"
