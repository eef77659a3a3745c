"""Cached runs of chapter 3: one text classifier trained under one attack setting by one method.

A run poisons the (optionally subsampled) training set with a setting's triggers, trains
with a method, and measures CACC on the whole clean test set and the ASR of each trigger on
its whole triggered non-target test set (``smoke`` cuts each test set to ``n_test`` sentences).
A mix's overall ASR weighs the triggers' ASRs by their poison rates (the authors' test mixtures
hold the triggers in those proportions).

Methods that train: ``no_defense``, ``benign`` (the clean training set), ``dpoe`` (one
shallow trigger-only expert, R-drop), ``npoe`` (pre-trained experts, gate, R-drop), ``bki``
(No defense's model names suspected trigger words; the sentences holding them are dropped and a
new model trained). Defenses at test time, on No defense's model: ``onion`` (rewrites inputs),
``strip`` and ``rap`` (reject inputs). Their settings are OpenBackdoor's defaults, fitted on
the clean dev set only (STRIP's and RAP's thresholds at a 1 % false rejection rate).
"""
from __future__ import annotations

import copy
import time

import numpy as np
import torch

from ..metrics import accuracy, attack_success_rate
from ..params import ParameterError, check_choice, check_int, check_optional_int, check_positive
from ..runcache import RunCache
from . import poe
from .data import SIZES, TextSet, check_dataset, check_style, load_split, n_classes
from .models import DEFAULT_ENCODER, HiddenGate, TextClassifier, load_classifier, load_tokenizer
from .poisoning import SETTINGS, check_setting, poison_training_set, pretrain_set, setting_rates, triggered_test_set
from .training import (PoE, Recipe, Tokenized, autocast, gate_logits, n_pretrain_batches, pretrain_expert,
                       train_classifier, train_poe)

SCHEMA = 4  # bump when a change to the code invalidates cached runs
TRAINED = ("no_defense", "benign", "dpoe", "npoe")
DEFENSES = ("onion", "bki", "strip", "rap")
METHODS = TRAINED + DEFENSES
# OpenBackdoor's defaults; ``n_test``: ONION's test sentences per set (its LM is slow on a CPU)
DEFENSE_PARAMS = {"onion": {"threshold": 0.0, "precision": "auto"}, "bki": {"top_k": 5, "n_keywords": 1},
                  "strip": {"repeat": 5, "swap_ratio": 0.5, "frr": 0.01},
                  "rap": {"rap_word": "cf", "epochs": 5, "lr": 1e-2, "prob_range": [-0.1, -0.3], "frr": 0.01}}
# the authors' expert pre-training order: expert b gets set b mod 4
EXPERT_ORDER = ("insertsent", "syntactic", "badnet", "style")
# NPoE's pseudo-dev rule: the authors' code (the primary source, on whose signals its thresholds
# were set; the paper's text could not be obtained), or "paper", the formula as summaries give it
SELECT_RULE = "code"
# what NPoE's gate reads: the text (its own shallow encoder, the paper) or the main model's
# [CLS] state (the authors' --gate_on_hidden)
GATE_INPUTS = ("text", "hidden")

PROFILES = {
    # every code path in about a minute; numbers are not meaningful
    "smoke": {"encoder": DEFAULT_ENCODER, "layers": 2, "n_train": 160, "n_test": 100, "max_length": 48,
              "recipe": dict(epochs=1, batch_size=16, lr=1e-4, small_lr=1e-4),
              "experts": dict(n=4, layers=1, gate_layers=1, pretrain_n=32, pretrain_steps=2, pretrain_epochs=None, gate_on="text", cls_only=True),
              "onion_n_test": 8, "bki_n_score": None, "n_dev": 100, "seeds": (0,), "select_beta": [1.0, 2.0],
              "select_scale": None,
              "datasets": ["sst2"], "settings": ["mix4"],
              "figures": dict(n_train=None, epochs=None, expert_layers=[1, 2], gate_layers=[1, 2],
                              rate_scale=[1.0, 2.0])},
    # this 2-core CPU: MiniLM-L6, a subset of the training set, short sequences
    "quick": {"encoder": DEFAULT_ENCODER, "layers": None, "n_train": None, "n_test": None, "max_length": 64,
              "recipe": dict(epochs=2, batch_size=16, lr=3e-5, small_lr=5e-4),
              # NPoE's experts train jointly at the example script's learning rate (the code's default
              # 5e-4 goes with frozen experts); DPoE's expert at DPoE's own (its run_train.sh)
              "small_lr_by_method": {"npoe": 2e-5, "dpoe": 8e-5},
              # a two-layer gate: the authors' code default (their example script uses one)
              # pre-training runs to the authors' 800-batch cap (``--pretrain_iters``): the recipe's 2 epochs
              # over 100 sentences (14 batches) left every expert at chance on its own set
              "experts": dict(n=4, layers=1, gate_layers=2, pretrain_n=100, pretrain_steps=800, pretrain_epochs=200, gate_on="text", cls_only=True),
              "onion_n_test": 150, "bki_n_score": 2000, "n_dev": None, "seeds": (0,), "select_beta": [1.0, 4.0, 8.0],
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
              "experts": dict(n=4, layers=1, gate_layers=1, pretrain_n=100, pretrain_steps=800, pretrain_epochs=None, gate_on="text", cls_only=True),
              "onion_n_test": None, "bki_n_score": None, "n_dev": None, "seeds": (0, 1, 2, 3, 4),
              "select_beta": [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0], "select_scale": None,
              "datasets": ["sst2", "offenseval", "trec", "hatespeech"],
              "settings": ["badnet", "insertsent", "syntactic", "style", "mix3", "mix4"],
              "figures": dict(n_train=None, epochs=None, expert_layers=[1, 2, 3, 4, 6], gate_layers=[1, 2, 3, 6], rate_scale=[1.0, 2.0])},
}


def profile(name: str) -> dict:
    return copy.deepcopy(PROFILES[check_choice("profile", name, PROFILES)])


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
    same logits for fewer FLOPs).
    """
    p = profile(profile_name)
    check_dataset(dataset)
    check_setting(setting)
    check_choice("method", method, METHODS)
    check_style(style)
    unknown = set(overrides) - {"encoder", "layers", "n_train", "max_length", "epochs", "lr", "small_lr"}
    if unknown:
        raise ParameterError("overrides", "encoder, layers, n_train, max_length, epochs, lr or small_lr",
                             sorted(unknown))
    check_int("seed", seed)
    check_int("target", target, 0, n_classes(dataset) - 1)
    n_train = check_optional_int("n_train", overrides.get("n_train", p["n_train"]), 1, SIZES[dataset][0])
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
        experts = {**p["experts"], "double_softmax": False, **(expert_params or {})}
        if method == "dpoe":  # one expert, no pre-training, no gate (DPoE's recipe, with R-drop)
            experts.update(n=1, pretrain_steps=0, gate_layers=0)
        check_int("experts", experts["n"], 1)
        check_int("expert layers", experts["layers"], 1)
        check_choice("gate_on", experts["gate_on"], GATE_INPUTS)
        config["experts"] = experts
        config["poe"] = PoE(**(poe_params or {})).as_dict()
    if method in DEFENSES:
        config["defense"] = dict(DEFENSE_PARAMS[method])
        if method == "onion":
            config["defense"]["n_test"] = p["onion_n_test"]
        if method == "bki" and p["bki_n_score"] is not None:
            config["defense"]["n_score"] = p["bki_n_score"]
        if p["n_dev"] is not None:  # smoke: a part of the clean dev set fits the thresholds
            config["defense"]["n_dev"] = p["n_dev"]
    return config


# the sensitivity figures: figure id -> the parameter varied
FIGURES = {"npoe-fig-beta": "beta", "npoe-fig-expert-depth": "expert_layers",
           "npoe-fig-gate-layers": "gate_layers", "npoe-fig-double-rate": "rate_scale"}


def figure_configs(profile_name: str, figure: str, dataset: str = "sst2", setting: str = "mix3", seed: int = 0,
                   values=None, style: str = "bible", poe_params: dict | None = None,
                   expert_params: dict | None = None, **overrides) -> list[dict]:
    """The runs of one sensitivity figure: NPoE at each value of its parameter (and No defense
    at each poison rate for the doubled-rate figure), at the profile's figure scale; the β
    figure is NPoE's selection sweep (:func:`select_npoe`), at its scale (``select_scale``).
    ``poe_params`` and ``expert_params`` are the table's NPoE settings; the figure's own
    parameter overrides them."""
    param = FIGURES[check_choice("figure", figure, FIGURES)]
    p = profile(profile_name)
    fig = p["figures"]
    if param == "beta":  # the selection sweep itself
        table = run_config(profile_name, dataset, setting, "npoe", seed, style=style, poe_params=poe_params,
                           expert_params=expert_params, **overrides)
        return selection_configs(table, None if values is None else list(values))
    values = fig[param] if values is None else list(values)
    scale = {k: fig[k] for k in ("n_train", "epochs") if fig[k] is not None} | overrides
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
                               expert_params=expert_v if m == "npoe" else None, **scale) for m in methods]
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


def select_npoe(config: dict, force: bool = False, executor=None, betas=None, rule: str = SELECT_RULE):
    """Train NPoE at each β of the grid and pick one by the pseudo-dev rule (no test data):
    ``(chosen run, every candidate run, index of the chosen)``. Where the candidates ran at a
    smaller scale (``select_scale``), the chosen β is then trained at ``config``'s. ``rule``:
    the authors' code's signals (``"code"``) or the paper's formula as we read it (``"paper"``)."""
    check_choice("select_rule", rule, poe.PSEUDO_DEV_RULES)
    configs = selection_configs(config, betas)
    candidates = results(configs, force=force, executor=executor)
    chosen = poe.select_by_pseudo_dev([r.metrics["pseudo_dev"] for r in candidates], config["dataset"], rule)
    final = with_beta(config, configs[chosen]["poe"]["beta"])
    run = candidates[chosen] if final == configs[chosen] else results([final], force=force, executor=executor)[0]
    return run, candidates, chosen


def base_config(config: dict) -> dict:
    """The No defense run that a test-time defense (or BKI) starts from."""
    return {k: v for k, v in config.items() if k != "defense"} | {"method": "no_defense"}


def run_label(config: dict) -> str:
    scale = sum(config["rates"].values())
    return f"{config['dataset']} {config['setting']} ({scale * 100:g}%) {config['method']} seed {config['seed']}"


def training_set(config: dict):
    """The run's training subset (seeded) and its poisoned version (the poison is drawn on the subset)."""
    full = load_split(config["dataset"], "train")
    rows = np.arange(len(full))
    if config["n_train"] is not None:
        rows = np.sort(np.random.default_rng(config["seed"]).permutation(len(full))[:config["n_train"]])
    clean = full.subset(rows)
    return clean, poison_training_set(clean, config["rates"], config["dataset"], config["target"],
                                      config["seed"], config["style"], rows_in_full=rows)


def evaluate(classifier: TextClassifier, config: dict, filter_fn=None) -> dict:
    """CACC on the clean test set, ASR per trigger and overall (rate-weighted), in percent.

    ``filter_fn(sentences) -> (sentences, keep)`` is a test-time defense: it may rewrite the
    sentences (ONION) and reject some (``keep`` False: STRIP, RAP); a rejected sentence
    counts as neither correct nor attacked."""
    def predictions(sentences):
        if filter_fn is None:
            return classifier.predict(sentences), np.ones(len(sentences), dtype=bool)
        sentences, keep = filter_fn(sentences)
        return classifier.predict(sentences), np.asarray(keep)

    def cut(s: TextSet) -> TextSet:  # smoke only: a seeded part of each test set
        n = config.get("n_test")
        return s if n is None or n >= len(s) else s.subset(np.random.default_rng(0).permutation(len(s))[:n])

    test = cut(load_split(config["dataset"], "test"))
    pred, keep = predictions(test.sentences)
    metrics = {"cacc": accuracy(np.where(keep, pred, -1), test.labels), "asr_by_trigger": {}}
    for trigger in config["rates"]:
        t = cut(triggered_test_set(config["dataset"], trigger, config["target"], config["seed"], config["style"]))
        pred, keep = predictions(t.sentences)
        metrics["asr_by_trigger"][trigger] = attack_success_rate(np.where(keep, pred, -1), t.labels,
                                                                 config["target"])
    rates = config["rates"]
    metrics["asr"] = sum(metrics["asr_by_trigger"][t] * r for t, r in rates.items()) / sum(rates.values())
    return metrics


def _main_model(config: dict, seed_offset: int = 0):
    return load_classifier(config["encoder"], n_classes(config["dataset"]), config["layers"],
                           seed=config["seed"] + seed_offset)


def run(config: dict, max_steps: int | None = None) -> tuple[dict, dict]:
    """Train (or defend) and evaluate one configuration (no caching: see :func:`results`)."""
    start = time.perf_counter()
    metrics, tensors = run_defense(config) if config["method"] in DEFENSES else run_training(config, max_steps)
    metrics["wall_seconds"] = time.perf_counter() - start  # everything: loading, pre-training, evaluation
    return metrics, tensors


def minutes(runs_) -> float:
    """The minutes the distinct runs took when they were trained (older runs: training and defense time only)."""
    unique = {r.path.name: r for r in runs_}.values()
    return sum(r.metrics.get("wall_seconds", r.metrics.get("history", {}).get("seconds", 0)
                             + r.metrics.get("defense_seconds", 0)) for r in unique) / 60


def run_training(config: dict, max_steps: int | None = None) -> tuple[dict, dict]:
    seed, recipe = config["seed"], Recipe(**config["recipe"])
    tokenizer = load_tokenizer(config["encoder"])
    clean, poisoned = training_set(config)
    train_data = clean if config["method"] == "benign" else poisoned.data
    data = Tokenized(tokenizer, train_data, recipe.max_length)
    model = _main_model(config)
    metrics = {"n_train": len(train_data), "n_poisoned": poisoned.counts(), "requested": poisoned.requested}
    tensors = {}
    if config["method"] in ("no_defense", "benign"):
        metrics["history"] = train_classifier(model, data, recipe, seed, max_steps=max_steps, desc=run_label(config))
    else:
        experts, gate, pre = _experts(config)
        metrics["pretraining"] = pre
        metrics["history"] = train_poe(model, experts, gate, data, recipe, PoE(**config["poe"]), seed,
                                       max_steps=max_steps, desc=run_label(config))
        metrics["pseudo_dev"], outputs = pseudo_dev(config, model, experts, gate, tokenizer, data)
        metrics["routing"] = routing(outputs, poisoned.poison_idx, clean.labels, config["target"])
    classifier = TextClassifier(model, tokenizer, recipe.max_length)
    metrics.update(evaluate(classifier, config))
    tensors.update({f"model.{k}": v for k, v in model.state_dict().items()})
    metrics["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    return metrics, tensors


def expert_config(config: dict, j: int) -> dict:
    """Expert ``j``'s pre-training as a run of its own (the cache key): what shapes its weights.
    β, the gate and the main model's training set do not, so a run's selection candidates, its
    chosen β and most figure runs share their pre-trained experts."""
    e = config["experts"]
    keys = ("layers", "cls_only", "double_softmax", "pretrain_n", "pretrain_steps", "pretrain_epochs")
    return {"schema": SCHEMA, "chapter": "npoe-expert", "encoder": config["encoder"], "dataset": config["dataset"],
            "style": config["style"], "seed": config["seed"], "expert": j,
            "trigger": EXPERT_ORDER[j % len(EXPERT_ORDER)], "recipe": config["recipe"]} | {k: e.get(k) for k in keys}


def pretrain_batches(config: dict) -> int:
    """The batches each expert pre-trains for: the passes over its set, at most ``pretrain_steps``."""
    e, r = config["experts"], config["recipe"]
    if not e["pretrain_steps"]:
        return 0
    passes = r["epochs"] if e.get("pretrain_epochs") is None else e["pretrain_epochs"]
    return n_pretrain_batches(e["pretrain_n"], r["batch_size"], passes, e["pretrain_steps"])


def _new_expert(cfg: dict):
    return load_classifier(cfg["encoder"], n_classes(cfg["dataset"]), cfg["layers"], seed=cfg["seed"] + 1 + cfg["expert"],
                           cls_only=bool(cfg["cls_only"]))


def pretrain_run(cfg: dict) -> tuple[dict, dict]:
    """Pre-train one trigger-only expert on the defender's own trigger instances over clean dev
    sentences (:func:`expert_config`): its pre-training record and its weights."""
    start, recipe = time.perf_counter(), Recipe(**cfg["recipe"])
    expert, seed = _new_expert(cfg), cfg["seed"] + cfg["expert"]
    ps = pretrain_set(cfg["trigger"], load_split(cfg["dataset"], "dev"), cfg["style"], cfg["pretrain_n"], seed=seed)
    history = pretrain_expert(expert, Tokenized(load_tokenizer(cfg["encoder"]), ps, recipe.max_length), recipe,
                              cfg["pretrain_steps"], seed, cfg["double_softmax"], progress=False,
                              epochs=cfg["pretrain_epochs"])
    return dict(trigger=cfg["trigger"], **history, seconds=time.perf_counter() - start), expert.state_dict()


def _experts(config: dict):
    """The trigger-only experts (the encoder's first layers), pre-trained (cached runs of their
    own, :func:`pretrain_run`), and the gate (none for DPoE)."""
    e = config["experts"]
    experts, history = [], []
    for j in range(e["n"]):
        cfg = expert_config(config, j)
        expert = _new_expert(cfg)
        if e["pretrain_steps"]:
            pre = RunCache().get_or_run(cfg, pretrain_run)
            expert.load_state_dict(pre.tensors())
            history.append(pre.metrics)
        experts.append(expert)
    gate = None
    if e["gate_layers"]:
        gate = HiddenGate(experts[0].config.hidden_size, e["n"], seed=config["seed"] + 100) \
            if e.get("gate_on", "text") == "hidden" \
            else load_classifier(config["encoder"], e["n"], e["gate_layers"], seed=config["seed"] + 100,
                                 cls_only=e.get("cls_only", False))
    return experts, gate, history


@torch.no_grad()
def pseudo_dev(config: dict, main, experts, gate, tokenizer, data: Tokenized, batch_size: int = 64):
    """NPoE's model-selection signals on the training set: the share flagged pseudo-poisoned
    (r_y < R and q_y > B) and the main model's agreement with their labels, both as we read the
    paper and (``code``) as the authors' code computes them, and the main model's accuracy on
    100 clean dev sentences; and the
    per-row outputs (main model, mixture, gate weights, each expert's probabilities) for :func:`routing`."""
    cfg = PoE(**config["poe"])
    logit_all, q_all, g_all, b_all = [], [], [], []
    order = np.argsort(data.lengths, kind="stable")  # similar lengths together: less padding
    for start in range(0, len(data), batch_size):
        idx = order[start:start + batch_size]
        batch = data.batch(idx)
        with autocast(True, torch.device("cpu")):  # the training precision
            out = main(**batch, output_hidden_states=isinstance(gate, HiddenGate))
            weights = poe.gate_weights(gate_logits(gate, batch, out, len(idx)), cfg.top_k, cfg.gate_mask) \
                if gate is not None else torch.ones(len(idx), 1)
            expert_logits = torch.stack([e(**batch).logits for e in experts]).float()
        logit_all.append(out.logits.float())
        q_all.append(torch.softmax(poe.expert_mixture(expert_logits, weights), -1))
        g_all.append(weights)
        b_all.append(torch.softmax(expert_logits, -1))
    back = torch.as_tensor(np.argsort(order))  # rows back in the data's order
    logits, q = torch.cat(logit_all)[back], torch.cat(q_all)[back]
    r = torch.softmax(logits, -1)
    gates, experts_p = torch.cat(g_all)[back], torch.cat(b_all, 1)[:, back]
    flagged = poe.pseudo_dev_mask(r, q, data.labels)
    agree = r.argmax(-1) == data.labels
    # the authors' code: raw logit, arithmetic mixture; its pseudo-ASR needs more flagged rows
    # than 3 % of the batches (else -1 there, None here), and it also reports a pseudo clean
    # accuracy on rows the experts doubt (< 0.7) and the main model backs (raw logit > 0.8)
    mix = poe.arithmetic_mixture(experts_p, gates)
    code_flagged = poe.pseudo_dev_mask_code(logits, mix, data.labels)
    labels = data.labels[:, None]
    trusted = (mix.gather(-1, labels)[:, 0] < 0.7) & (logits.gather(-1, labels)[:, 0] > 0.8)
    n_batches = -(-len(data) // config["recipe"]["batch_size"])
    code = {"detected_rate": float(code_flagged.float().mean()),
            "pseudo_asr": float(agree[code_flagged].float().mean())
            if int(code_flagged.sum()) > int(0.03 * n_batches) else None,
            "pseudo_acc": float(agree[trusted].float().mean()) if int(trusted.sum()) > int(0.1 * n_batches) else None}
    dev = load_split(config["dataset"], "dev")
    small = dev.subset(np.random.default_rng(0).permutation(len(dev))[:100])
    clf = TextClassifier(main, tokenizer, config["recipe"]["max_length"])
    signals = {"detected_rate": float(flagged.float().mean()),
               "pseudo_asr": float(agree[flagged].float().mean()) if flagged.any() else 0.0,
               "clean_small_acc": accuracy(clf.predict(small.sentences), small.labels), "code": code}
    return signals, {"main": r, "mixture": q, "gate": gates, "experts": experts_p}


def routing(outputs: dict, poison_idx: dict, clean_labels: np.ndarray, target: int) -> dict:
    """Where the gate sends each kind of training row, and who votes for the target there.

    For the rows of each trigger whose true label is not the target, and for the clean
    non-target rows: the mean gate weight of each expert, each expert's and the mixture's mean
    probability of the target, and the main model's. An analysis for the page (it knows which
    rows were poisoned); nothing in training or model selection reads it."""
    poisoned = np.concatenate([np.asarray(i, dtype=int) for i in poison_idx.values()] or [np.zeros(0, int)])
    is_clean = np.ones(len(clean_labels), dtype=bool)
    is_clean[poisoned] = False
    groups = {t: np.asarray(i, dtype=int)[clean_labels[i] != target] for t, i in poison_idx.items()}
    groups["clean"] = np.flatnonzero(is_clean & (clean_labels != target))
    out = {}
    for name, rows in groups.items():
        if len(rows) == 0:
            continue
        rows = torch.as_tensor(rows)
        out[name] = {"n": len(rows), "gate": outputs["gate"][rows].mean(0).tolist(),
                     "experts_p_target": outputs["experts"][:, rows, target].mean(1).tolist(),
                     "mixture_p_target": float(outputs["mixture"][rows, target].mean()),
                     "main_p_target": float(outputs["main"][rows, target].mean())}
    return out


def load_model(run) -> TextClassifier:
    """The trained classifier of a cached run."""
    c = run.config
    model = load_classifier(c["encoder"], n_classes(c["dataset"]), c["layers"])
    model.load_state_dict({k[len("model."):]: v for k, v in run.tensors().items() if k.startswith("model.")})
    return TextClassifier(model.eval(), load_tokenizer(c["encoder"]), c["recipe"]["max_length"])


def results(configs: list[dict], cache: RunCache | None = None, force: bool = False, executor=None) -> list:
    """Run (or load) every configuration, in order."""
    return (cache or RunCache()).sweep(configs, run, force, desc="NPoE runs", label=run_label,
                                       executor=executor)


def run_defense(config: dict) -> tuple[dict, dict]:
    """A defense applied to No defense's cached model (trained first if missing)."""
    from . import bki, onion, rap, strip

    base = RunCache().get_or_run(base_config(config), run_training)
    classifier, d = load_model(base), config["defense"]
    dev = load_split(config["dataset"], "dev")
    if d.get("n_dev"):
        dev = dev.subset(np.random.default_rng(0).permutation(len(dev))[:d["n_dev"]])
    metrics, tensors = {"base_run": base.path.name}, {}
    start = time.perf_counter()
    if config["method"] == "onion":
        lm = onion.Perplexity(precision=d.get("precision", "fp32"))
        metrics["lm_precision"] = lm.precision
        metrics.update(evaluate(classifier, dict(config, n_test=d["n_test"]),
                                lambda s: (onion.onion_filter(s, lm, d["threshold"], progress=False),
                                           np.ones(len(s), dtype=bool))))
    elif config["method"] == "strip":
        ent = strip.strip_entropies(classifier, dev.sentences, dev.sentences, d["repeat"], d["swap_ratio"], config["seed"])
        threshold = strip.fit_threshold(ent, d["frr"])
        metrics["threshold"] = float(threshold)
        metrics.update(evaluate(classifier, config, lambda s: (s, strip.strip_entropies(
            classifier, s, dev.sentences, d["repeat"], d["swap_ratio"], config["seed"]) >= threshold)))
    elif config["method"] == "rap":
        detector = rap.fit_rap(classifier, dev.sentences, dev.labels, config["target"], d["rap_word"], d["epochs"],
                               d["lr"], tuple(d["prob_range"]), frr=d["frr"])
        metrics["threshold"] = float(detector.threshold)
        metrics.update(evaluate(classifier, config, lambda s: (s, ~detector.detect(s))))
    else:  # bki: drop the training sentences holding the suspected words, train anew
        _, poisoned = training_set(config)
        scored = poisoned.data.sentences
        if d.get("n_score") is not None and d["n_score"] < len(scored):  # quick: the statistics on a seeded subset
            pick = np.sort(np.random.default_rng(config["seed"]).permutation(len(scored))[:d["n_score"]])
            scored = [scored[i] for i in pick]
        metrics["n_scored"] = len(scored)
        keywords = bki.bki_keywords(classifier, scored, d["top_k"], d["n_keywords"])
        keep = bki.bki_filter(poisoned.data.sentences, keywords)
        metrics["keywords"] = [[w, float(v)] for w, v in keywords]
        metrics["removed"] = int((~keep).sum())
        metrics["removed_poison"] = {t: int((~keep[i]).sum()) for t, i in poisoned.poison_idx.items()}
        recipe = Recipe(**config["recipe"])
        tokenizer = load_tokenizer(config["encoder"])
        model = _main_model(config)
        kept = poisoned.data.subset(np.flatnonzero(keep))
        metrics["history"] = train_classifier(model, Tokenized(tokenizer, kept, recipe.max_length), recipe,
                                              config["seed"], desc=run_label(config))
        metrics.update(evaluate(TextClassifier(model, tokenizer, recipe.max_length), config))
        tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    metrics["defense_seconds"] = time.perf_counter() - start
    metrics["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    return metrics, tensors
