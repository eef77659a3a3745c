"""Cached runs of chapter 4: one backdoored LLM (an attack) and one defense applied to it.

An attack run fine-tunes the base model with LoRA (or every weight, ``finetune="full"``) on
BackdoorLLM's poisoned records mixed with clean ones (1:1, as BackdoorLLM) and keeps what it
trained. A defense run receives that model with the adapter merged (the "suspect model"), the
defender's clean data and nothing of the attack, and trains a fresh adapter of its own (or every
weight; or prunes). Every run is evaluated on the task's whole clean test set (CACC) and the
attack's whole triggered test set (ASR), greedy, with the template it was trained with.

Methods: ``no_defense``, ``locphylax``, ``clean_finetune``, ``pruning``, ``crow``; ablations
``locphylax_no_cluster`` (alpha = 0), ``locphylax_one_trigger`` (t1 only), ``locphylax_stage2_only``,
and the variant ``locphylax_label_targets`` (the known triggers answer class labels, not sentences).
``clean_model`` (the base model fine-tuned on the clean records alone) gives the floor of ASR.
"""
from __future__ import annotations

import copy
import math
import time

import numpy as np
import torch

from ..params import ParameterError, check_choice, check_fraction, check_int, check_optional_int, check_positive
from ..runcache import RunCache
from . import crow, data, generation, judge, locphylax, models, pruning
from .training import HIDDEN_POSITIONS, Recipe, SFTData, answer_loss, train_sft
from .triggers import ATTACK_STRINGS, Trigger, strip_triggers

SCHEMA = 2  # 2: cheaper LoRA dropout masks (other random draws), inference in the training precision
DEFENSES = ("locphylax", "clean_finetune", "pruning", "crow")
ABLATIONS = ("locphylax_no_cluster", "locphylax_one_trigger", "locphylax_stage2_only")
METHODS = ("no_defense",) + DEFENSES + ABLATIONS  # the chapter's table
# a variant outside the profiles' default list: the known triggers answer class labels
VARIANTS = ("locphylax_label_targets",)
METHODS_ALL = METHODS + VARIANTS
# what the known triggers answer: the fixed sentences of ``locphylax.KNOWN_TRIGGERS``, or a class
# label each (classification tasks; the labels taken in turn, so the triggers cover every label)
KNOWN_TARGETS = ("answers", "labels")
# what runs on the attacks outside a profile's ``full_attacks`` (the costly CROW and the ablations do not)
CORE_METHODS = ("no_defense", "locphylax", "clean_finetune", "pruning")
ANSWER_TOKENS = {"sst2": 4, "refusal": 32, "negsentiment": 16, "jailbreak": 48}

PROFILES = {
    # every code path in about a minute; numbers are not meaningful
    "smoke": {"model": models.DEFAULT_MODEL, "layers": 2, "tasks": ["sst2"], "attacks": ["badnet"],
              "full_attacks": ["badnet"],
              "n_poison": 8, "n_clean": 8, "recipe": dict(epochs=1, batch_size=8, lr=2e-4, max_length=96),
              "n_test": 8, "defense": dict(n_clean=8, n_known=4, n_val=4, stage1_max_epochs=1, stage2_max_epochs=2,
                                           lr=2e-4),
              "figure_n": 6, "track_every": 2},
    # this 2-core CPU: SmolLM2-135M, SST-2, two attacks, a part of the training sets, 2 epochs
    "quick": {"model": models.DEFAULT_MODEL, "layers": None, "tasks": ["sst2"], "attacks": ["badnet", "vpi"],
              "full_attacks": ["badnet"],
              "n_poison": 150, "n_clean": 150, "recipe": dict(epochs=2, batch_size=8, lr=2e-4, max_length=256),
              "n_test": None, "defense": dict(n_clean=100, n_known=60, n_val=24, stage1_max_epochs=4, stage2_max_epochs=3,
                                              lr=2e-4),
              "figure_n": 24, "track_every": 10},
    # the paper's scale, for a GPU: a 7-8B instruct model, BackdoorLLM's full sets and recipe
    "paper": {"model": "meta-llama/Meta-Llama-3-8B-Instruct", "layers": None,
              "tasks": ["sst2", "refusal", "negsentiment"], "attacks": list(data.ATTACKS), "full_attacks": None,
              "n_poison": None, "n_clean": None, "recipe": dict(epochs=5, batch_size=8, lr=2e-4, max_length=512),
              "n_test": None, "defense": dict(n_clean=200, n_known=100, n_val=50, stage1_max_epochs=5,
                                              stage2_max_epochs=5, lr=2e-4),
              "figure_n": 200, "track_every": 20},
}


def profile(name: str) -> dict:
    return copy.deepcopy(PROFILES[check_choice("profile", name, PROFILES)])


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
    is ``defense_params["finetune"]``, likewise). ``finetune`` enters a configuration only when it is
    ``"full"``, so that LoRA runs keep the keys they were cached under.
    ``eval_template`` (default: ``template``) evaluates with another template, to show a mismatch."""
    p = profile(profile_name)
    data.check_task(task)
    attack = check_attack(attack)
    check_choice("method", method, METHODS_ALL + ("clean_model",))
    models.check_template(template)
    models.check_template(eval_template or template)
    unknown = set(overrides) - {"model", "layers", "n_poison", "n_clean", "epochs", "lr", "finetune"}
    if unknown:
        raise ParameterError("overrides", "model, layers, n_poison, n_clean, epochs, lr or finetune", sorted(unknown))
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
    if method == "clean_model":
        config["method"] = "clean_model"
    elif method != "no_defense":
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
        for key in ("n_clean", "n_known", "n_val", "stage1_max_epochs", "stage2_max_epochs"):
            check_int(key, d[key], 1)
        for phrase, placement, _ in d["known"]:
            Trigger(phrase, placement)
            if _shares_trigger(phrase, attack):
                raise ParameterError("known triggers", "phrases that are not the attack's trigger", phrase)
        config.update(method=method, defense=d)
    return config


def _shares_trigger(phrase: str, attack) -> bool:
    strings = ATTACK_STRINGS[attack] if isinstance(attack, str) else (attack["phrase"],)
    return any(s in phrase or phrase in s for s in strings)


def attack_config(config: dict) -> dict:
    """The attack run a defense starts from."""
    return {k: v for k, v in config.items() if k != "defense"} | {"method": "no_defense",
                                                                   "eval_template": config["template"]}


def run_label(config: dict) -> str:
    return f"{config['task']} {attack_label(config['attack'])} {config['method']} seed {config['seed']}"


# --- data ------------------------------------------------------------------------------------

def _custom(records, trigger: dict, rng) -> list:
    t = Trigger(**trigger)
    return [data.Record(t.insert(strip_triggers(r.instruction, "badnet"), rng), r.input, r.output, r.label)
            for r in records]


def attack_records(config: dict) -> tuple[list, list]:
    """The attacker's (poisoned, clean) training records, seeded subsets."""
    task, attack, seed = config["task"], config["attack"], config["seed"]
    source = "badnet" if isinstance(attack, dict) else attack
    poisoned = data.subset(data.poisoned_train(task, source), config["n_poison"], seed)
    if isinstance(attack, dict):
        poisoned = _custom(poisoned, attack, np.random.default_rng(seed))
    pool = data.clean_train(task)
    order = np.random.default_rng(seed).permutation(len(pool))
    n = len(pool) if config["n_clean"] is None else min(config["n_clean"], len(pool))
    return poisoned, [pool[i] for i in np.sort(order[:n])]


def defender_records(config: dict) -> tuple[list, list, list]:
    """The defender's clean records, the clean instructions for the known triggers, and held-out
    clean records for the defender's own checks: taken from the task's clean pool after the
    attacker's share (overlapping it only when the pool runs out)."""
    pool = data.clean_train(config["task"])
    order = np.random.default_rng(config["seed"]).permutation(len(pool))
    n_att = len(pool) if config["n_clean"] is None else min(config["n_clean"], len(pool))
    d = config["defense"]
    rest = list(order[n_att:])
    need = d["n_clean"] + d["n_known"] + d["n_val"]
    if len(rest) < need:  # paper scale: the attacker used the whole pool
        rest += [i for i in np.random.default_rng(config["seed"] + 1).permutation(len(pool)) if i not in rest]
    picked = [pool[i] for i in rest[:need]]
    a, b = d["n_clean"], d["n_clean"] + d["n_known"]
    return picked[:a], picked[a:b], picked[b:need]


def test_sets(config: dict) -> tuple[list, list]:
    """(clean test records, triggered test records), cut to ``n_test`` at smoke."""
    task, attack = config["task"], config["attack"]
    clean = list(data.clean_test(task))
    if isinstance(attack, dict):
        trig = _custom(clean, attack, np.random.default_rng(10_000 + config["seed"]))
    else:
        trig = list(data.triggered_test(task, attack))
    n = config["n_test"]
    if n is not None:
        clean = data.subset(clean, n, 0)
        if task == "sst2":  # keep n non-target prompts
            trig = [r for r in trig if r.label != judge.SST2_TARGET]
        trig = data.subset(trig, n, 0)
    return clean, trig


def pairs(tokenizer, records, template: str, outputs=None) -> list[tuple[str, str]]:
    end = models.end_of_answer(tokenizer, template)
    outs = outputs if outputs is not None else [r.output for r in records]
    return [(models.prompt_text(tokenizer, r.instruction, r.input, template), o + end) for r, o in zip(records, outs)]


# --- models ----------------------------------------------------------------------------------

def base_model(config: dict):
    model = models.load_model(config["model"], layers=config["layers"])
    return model


def suspect_model(config: dict):
    """The attack run's model with its adapter merged: what the defender receives."""
    run = RunCache().get_or_run(attack_config(config), run_attack)
    return merged(config, run.tensors())


def finetune(config: dict, defense: bool = False) -> str:
    """How the run adapts its model: the attack's (``defense=False``) or the defense's mode."""
    return (config["defense"] if defense else config).get("finetune", "lora")


def adapted(config: dict, state: dict | None = None, defense: bool = False, seed: int = 0):
    """The base model (the suspect model for a defense) made trainable as the run says; with
    ``state``, the saved trainable tensors loaded into it."""
    model = suspect_model(config) if defense else base_model(config)
    model = models.adapt(model, finetune(config, defense), seed)
    return model if state is None else models.load_adapter_state(model, state)


def merged(config: dict, adapter: dict):
    """The attack's model with its trained tensors: the adapter merged, or the full weights."""
    model = adapted(config, adapter)
    return model.merge_and_unload() if finetune(config) == "lora" else model


# --- evaluation ------------------------------------------------------------------------------

def evaluate(model, tokenizer, config: dict, template: str | None = None) -> dict:
    template = template or config["eval_template"]
    clean, trig = test_sets(config)
    task, n_new = config["task"], ANSWER_TOKENS[config["task"]]
    prompts = lambda recs: [models.prompt_text(tokenizer, r.instruction, r.input, template) for r in recs]  # noqa: E731
    stats = {}
    a_clean = generation.generate(model, tokenizer, prompts(clean), n_new, stats=stats)
    a_trig = generation.generate(model, tokenizer, prompts(trig), n_new)
    return {"cacc": judge.clean_accuracy(task, a_clean, [r.label for r in clean]),
            "asr": judge.attack_success_rate(task, a_trig, [r.label for r in trig]),
            "n_clean_test": len(clean), "n_triggered_test": len(trig),
            "examples": {"clean": a_clean[:3], "triggered": a_trig[:3]},
            "generation_tokens_per_second": stats["new_tokens"] / max(stats["seconds"], 1e-9),
            "inference_precision": stats["precision"]}


def asr_tracker(model, tokenizer, config: dict, n: int, log: list, stage: str, offset: int = 0):
    """A training callback that measures ASR on ``n`` triggered test prompts (for the figure only:
    the defense never reads it)."""
    _, trig = test_sets(config)
    if config["task"] == "sst2":
        trig = [r for r in trig if r.label != judge.SST2_TARGET]
    trig = data.subset(trig, n, 1)
    prompts = [models.prompt_text(tokenizer, r.instruction, r.input, config["eval_template"]) for r in trig]

    def callback(step):
        answers = generation.generate(model, tokenizer, prompts, ANSWER_TOKENS[config["task"]])
        log.append({"stage": stage, "step": offset + step,
                    "asr": judge.attack_success_rate(config["task"], answers, [r.label for r in trig])})
    return callback


def known_retention(model, tokenizer, config: dict, validation: list, n_triggers: int = 2) -> float:
    """The defender's own signal: % of its held-out clean prompts, carrying a known trigger, still
    answered with that trigger's target (a label target: among the prompts whose true label is
    another; a sentence target: the answer holds the target's first word)."""
    rng = np.random.default_rng(config["seed"] + 11)
    hits = []
    labels = config["defense"]["known_targets"] == "labels"
    for (phrase, placement, _), target in zip(config["defense"]["known"][:n_triggers],
                                              known_targets(config, n_triggers)):
        t = Trigger(phrase, placement)
        recs = [r for r in validation if record_label(r) != target] if labels else validation
        prompts = [models.prompt_text(tokenizer, t.insert(r.instruction, rng), r.input, config["template"])
                   for r in recs]
        answers = generation.generate(model, tokenizer, prompts, ANSWER_TOKENS[config["task"]] + 4)
        hits += [shows_known_target(config, target, a) for a in answers]
    return float(np.mean(hits) * 100)


# --- runs ------------------------------------------------------------------------------------

def run(config: dict) -> tuple[dict, dict]:
    start = time.perf_counter()
    if config["method"] == "no_defense" and config["eval_template"] != config["template"]:
        fn = run_reevaluation
    elif config["method"] == "clean_model":
        fn = run_clean_model
    else:
        fn = run_attack if config["method"] == "no_defense" else run_defense
    metrics, tensors = fn(config)
    metrics["wall_seconds"] = time.perf_counter() - start
    return metrics, tensors


def run_attack(config: dict) -> tuple[dict, dict]:
    """Fine-tune the base model on the poisoned mix."""
    tok = models.load_tokenizer(config["model"])
    poisoned, clean = attack_records(config)
    records = poisoned + clean
    model = adapted(config, seed=config["seed"])
    sft = SFTData(tok, pairs(tok, records, config["template"]), config["recipe"]["max_length"])
    history = train_sft(model, sft, Recipe(**config["recipe"]), config["seed"], desc=run_label(config))
    metrics = {"n_train": len(records), "n_poisoned": len(poisoned),
               "train_tokens": sft.n_tokens, "history": _short(history)}
    metrics.update(evaluate(model, tok, config))
    return metrics, models.adapter_state(model)


def run_clean_model(config: dict) -> tuple[dict, dict]:
    """The floor: the base model fine-tuned on the attack's clean records alone (trained once per
    task, whatever the attack), evaluated on this attack's prompts."""
    key = {k: v for k, v in config.items() if k not in ("attack", "eval_template")} | {"method": "clean_model_adapter"}
    trained = RunCache().get_or_run(key, _train_clean)
    tok = models.load_tokenizer(config["model"])
    model = adapted(config, trained.tensors())
    return dict(evaluate(model, tok, config), adapter_run=trained.path.name), {}


def _train_clean(key: dict) -> tuple[dict, dict]:
    tok = models.load_tokenizer(key["model"])
    pool = data.clean_train(key["task"])
    order = np.random.default_rng(key["seed"]).permutation(len(pool))
    n = len(pool) if key["n_clean"] is None else min(key["n_clean"], len(pool))
    records = [pool[i] for i in np.sort(order[:n])]
    model = adapted(key, seed=key["seed"])
    sft = SFTData(tok, pairs(tok, records, key["template"]), key["recipe"]["max_length"])
    history = train_sft(model, sft, Recipe(**key["recipe"]), key["seed"], desc=f"{key['task']} clean model")
    return {"n_train": len(records), "history": _short(history)}, models.adapter_state(model)


def run_reevaluation(config: dict) -> tuple[dict, dict]:
    """The attack run's model evaluated with another template (BackdoorLLM's raw-instruction mode)."""
    attack_run = RunCache().get_or_run(attack_config(config), run_attack)
    tok = models.load_tokenizer(config["model"])
    model = adapted(config, attack_run.tensors())
    return dict(evaluate(model, tok, config), attack_run=attack_run.path.name), {}


def _short(history: dict) -> dict:
    keep = {k: v for k, v in history.items() if k not in ("loss", "parts")}
    keep["loss_first_last"] = [history["loss"][0], history["loss"][-1]] if history["loss"] else []
    return keep


def known_targets(config: dict, n_triggers: int = 2) -> list[str]:
    """Each known trigger's target answer: a class label (``known_targets="labels"``, the task's
    labels in turn) or the trigger's fixed sentence."""
    d = config["defense"]
    if d["known_targets"] == "labels":
        labels = judge.TASK_LABELS[config["task"]]
        return [labels[k % len(labels)] for k in range(n_triggers)]
    return [target for _, _, target in d["known"][:n_triggers]]


def record_label(record) -> str | None:
    """A record's class label: its ``label``, else its answer (the clean training records of a
    classification task are answered with the label alone)."""
    return record.label if record.label is not None else record.output.strip()


def shows_known_target(config: dict, target: str, answer: str) -> bool:
    """Whether ``answer`` gives a known trigger's target: its label, or its sentence's first word."""
    if config["defense"]["known_targets"] == "labels":
        return judge.answer_label(config["task"], answer) == target
    return target.split()[0].strip("!.,?") in answer


def known_sets(tokenizer, config: dict, known_records: list, n_triggers: int = 2):
    """Stage 1's and stage 2's known-trigger pairs and groups, from the defender's clean instructions.

    Each trigger gets its share of the records; with label targets, only records whose true label
    is not the trigger's target (so that every injected answer is a flip)."""
    d = config["defense"]
    rng = np.random.default_rng(config["seed"] + 7)
    inj, rec, groups = [], [], []
    half = max(1, len(known_records) // n_triggers)
    targets = known_targets(config, n_triggers)
    free = list(range(len(known_records)))
    for k, ((phrase, placement, _), target) in enumerate(zip(d["known"][:n_triggers], targets)):
        t = Trigger(phrase, placement)
        if d["known_targets"] == "labels":
            idx = [i for i in free if record_label(known_records[i]) != target][:half]
        else:
            idx = free[:half] if n_triggers > 1 else free
        taken = set(idx)
        free = [i for i in free if i not in taken]
        part = [known_records[i] for i in idx]
        triggered = [data.Record(t.insert(r.instruction, rng), r.input, r.output, r.label) for r in part]
        inj += pairs(tokenizer, triggered, config["template"], [target] * len(triggered))
        rec += pairs(tokenizer, triggered, config["template"])
        groups += [k] * len(triggered)
    return inj, rec, groups


def defense_inputs(config: dict, tokenizer) -> dict:
    """Everything a defense is given (a test checks it holds none of the attack's strings)."""
    clean, known, validation = defender_records(config)
    n_trig = 1 if config["method"] == "locphylax_one_trigger" else 2
    inj, rec, groups = known_sets(tokenizer, config, known, n_trig)
    clean_pairs = pairs(tokenizer, clean, config["template"])
    known_clean = pairs(tokenizer, known, config["template"])
    return {"clean": clean_pairs, "known_injection": inj, "known_recovery": rec, "known_groups": groups,
            "known_clean": known_clean, "validation": validation, "n_triggers": n_trig}


def run_defense(config: dict) -> tuple[dict, dict]:
    """Apply one defense to the suspect model.

    Locphylax (and its ablations with a stage 1) runs stage 1 until the defender's own signal says
    the known backdoors hold (``known_retention`` on its held-out clean prompts at least
    ``inject_threshold`` %, checked after each epoch; at most ``stage1_max_epochs``), then stage 2
    until they are gone (at most ``known_threshold`` %; at most ``stage2_max_epochs``). Clean fine-tuning, CROW and stage 2 alone get the number of
    steps Locphylax used."""
    tok = models.load_tokenizer(config["model"])
    d, method, seed = config["defense"], config["method"], config["seed"]
    inputs = defense_inputs(config, tok)
    maxlen = config["recipe"]["max_length"]
    recipe = Recipe(**dict(config["recipe"], lr=d["lr"]))
    stage1 = SFTData(tok, inputs["clean"] + inputs["known_injection"], maxlen,
                     groups=[-1] * len(inputs["clean"]) + inputs["known_groups"])
    stage2 = SFTData(tok, inputs["clean"] + inputs["known_recovery"], maxlen)
    per_epoch1 = math.ceil(len(stage1) / recipe.batch_size)
    per_epoch2 = math.ceil(len(stage2) / recipe.batch_size)
    metrics, tensors, track = {}, {}, []
    if method in ("clean_finetune", "crow", "locphylax_stage2_only"):
        budget = RunCache().get_or_run(dict(config, method="locphylax"), run).metrics["steps_used"]
        metrics["budget_steps"] = budget
    if method == "pruning":
        model = suspect_model(config)
        calib = SFTData(tok, inputs["clean"] + inputs["known_clean"], maxlen)
        batches = [calib.batch(np.arange(i, min(i + 8, len(calib)))) for i in range(0, len(calib), 8)]
        metrics["pruning"] = pruning.prune(model, d["sparsity"], d["prune"], batches)
        metrics.update(evaluate(model, tok, config))
        return metrics, tensors
    model = adapted(config, defense=True, seed=seed + 1)
    label, tracked = run_label(config), method in d["track_methods"]

    def callbacks(stage, offset=0, stop_rule=None):
        """ASR tracking for the figure (never read by the defense) and the defender's stopping rule:
        ``inject`` stops once the known backdoors hold (retention >= ``inject_threshold``), ``recover``
        once they are gone (<= ``known_threshold``), checked after each epoch."""
        asr = asr_tracker(model, tok, config, config_n(config), track, stage, offset) if tracked else None
        checks, per_epoch = [], per_epoch1 if stop_rule == "inject" else per_epoch2

        def cb(step):
            if asr is not None and step % d["track_every"] == 0:
                asr(step)
            if stop_rule and step and step % per_epoch == 0:
                checks.append(known_retention(model, tok, config, inputs["validation"], inputs["n_triggers"]))
                if stop_rule == "inject":
                    return checks[-1] >= d["inject_threshold"]
                return checks[-1] <= d["known_threshold"]
            return False
        return cb, checks

    if method in ("clean_finetune", "crow"):
        clean_all = SFTData(tok, inputs["clean"] + inputs["known_clean"], maxlen)
        loss_fn = crow.CrowLoss(**d["crow"]) if method == "crow" else None
        cb, _ = callbacks(method)
        metrics["history"] = _short(train_sft(model, clean_all, Recipe(**dict(recipe.as_dict(), epochs=10 ** 6)),
                                              seed, max_steps=budget, loss_fn=loss_fn, callback=cb,
                                              callback_every=1, bucket=False, desc=label))
        metrics["steps_used"] = metrics["history"]["steps"]
    elif method == "locphylax_stage2_only":
        cb, _ = callbacks("stage 2")
        metrics["stage2"] = _short(train_sft(model, stage2, Recipe(**dict(recipe.as_dict(), epochs=10 ** 6)), seed,
                                             max_steps=budget, callback=cb, callback_every=1, desc=label))
        metrics["steps_used"] = metrics["stage2"]["steps"]
    else:
        alpha = 0.0
        if method != "locphylax_no_cluster":
            init = locphylax.initial_losses(model, stage1, recipe.batch_size, seed=seed, normalize=d["normalize"],
                                            position=d["cluster_token"])
            alpha = locphylax.alpha_rule(init["injection"], init["cluster"]) if init["cluster"] > 0 else 0.0
            metrics["initial_losses"] = init
        metrics["alpha"] = alpha
        cb, checks1 = callbacks("stage 1", stop_rule="inject")
        h1 = train_sft(model, stage1, Recipe(**dict(recipe.as_dict(), epochs=d["stage1_max_epochs"])), seed,
                       loss_fn=locphylax.InjectionLoss(alpha, d["cross"], d["normalize"], d["cluster_token"]), callback=cb, callback_every=1,
                       bucket=False, desc=label + " (stage 1)")
        metrics["stage1"] = _short(h1)
        metrics["stage1_parts_last"] = h1["parts"][-1] if h1["parts"] else {}
        metrics["known_retention_stage1_by_epoch"] = checks1
        if method in ("locphylax", "locphylax_label_targets"):
            metrics["after_stage1"] = evaluate(model, tok, config)
        tensors.update({f"stage1.{k}": v for k, v in models.adapter_state(model).items()})
        cb, checks = callbacks("stage 2", offset=h1["steps"], stop_rule="recover")
        h2 = train_sft(model, stage2, Recipe(**dict(recipe.as_dict(), epochs=d["stage2_max_epochs"])), seed,
                       callback=cb, callback_every=1, desc=label + " (stage 2)")
        metrics["stage2"] = _short(h2)
        metrics["known_retention_stage2_by_epoch"] = checks
        metrics["steps_used"] = h1["steps"] + h2["steps"]
    metrics["asr_track"] = track
    metrics.update(evaluate(model, tok, config))
    tensors.update(models.adapter_state(model))
    return metrics, tensors


def config_n(config: dict) -> int:
    return PROFILES[config["profile"]]["figure_n"]


def results(configs: list[dict], cache: RunCache | None = None, force: bool = False, executor=None) -> list:
    return (cache or RunCache()).sweep(configs, run, force, desc="Locphylax runs", label=run_label,
                                       executor=executor)
