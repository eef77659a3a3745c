"""What chapter 4 measures on a model: CACC and ASR on the whole test sets, the defender's own
known-trigger signal, and ASR through training for the figure.

Answers are generated greedily with the template the run names (``eval_template``, the training
template unless a run asks to show a mismatch) and judged by BackdoorLLM's keyword rules
(:mod:`moebackdoor.llm.judge`). A run keeps every answer (``answers``), and :func:`score` recomputes
its metrics from them, under another rule if need be.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..devices import default_device
from . import data, generation, judge, models
from .records import known_targets, pairs, record_label, shows_known_target, test_sets
from .training import IGNORE, SFTData, answer_loss, causal_lm
from .triggers import Trigger

ANSWER_TOKENS = {"sst2": 4, "refusal": 32, "negsentiment": 16, "jailbreak": 48}


def answer_tokens(config: dict) -> int:
    """How many new tokens an evaluated answer may have: the run's ``answer_tokens``, else the task's."""
    return config.get("answer_tokens", ANSWER_TOKENS[config["task"]])


def score(config: dict, clean_answers: list[str], triggered_answers: list[str]) -> dict:
    """A run's metrics from its answers to the clean and the triggered test sets, in their order:
    CACC and ASR (percent), the share of answers with no label, and on ``sst2`` ASR under
    BackdoorLLM's rule."""
    clean, trig = test_sets(config)
    if (len(clean_answers), len(triggered_answers)) != (len(clean), len(trig)):
        raise ValueError(f"{len(clean_answers)} clean and {len(triggered_answers)} triggered answers for "
                         f"test sets of {len(clean)} and {len(trig)}")
    task = config["task"]
    m = {"cacc": judge.clean_accuracy(task, clean_answers, [r.label for r in clean]),
         "asr": judge.attack_success_rate(task, triggered_answers, [r.label for r in trig]),
         "no_label_clean": judge.no_label_share(task, clean_answers),
         "no_label_triggered": judge.no_label_share(task, triggered_answers)}
    if task == "sst2":
        m["asr_backdoorllm"] = judge.sst2_asr_backdoorllm(triggered_answers)
    return m


def evaluate(model, tokenizer, config: dict, template: str | None = None) -> dict:
    """CACC on the clean test set and ASR on the triggered one (percent, :func:`score`), with every answer."""
    template = template or config["eval_template"]
    clean, trig = test_sets(config)
    n_new = answer_tokens(config)
    prompts = lambda recs: [models.prompt_text(tokenizer, r.instruction, r.input, template) for r in recs]  # noqa: E731
    stats = {}
    a_clean = generation.generate(model, tokenizer, prompts(clean), n_new, stats=stats)
    a_trig = generation.generate(model, tokenizer, prompts(trig), n_new)
    return dict(score(config, a_clean, a_trig), n_clean_test=len(clean), n_triggered_test=len(trig),
                perplexity=perplexity(model, tokenizer, config, template),
                answer_tokens=n_new, answers={"clean": a_clean, "triggered": a_trig},
                generation_tokens_per_second=stats["new_tokens"] / max(stats["seconds"], 1e-9),
                inference_precision=stats["precision"])


def perplexity(model, tokenizer, config: dict, template: str | None = None) -> float:
    """The utility measure: perplexity of the clean test set's reference answers (and the end of
    the answer) given their prompts. No training set of the chapter holds these records, the
    attacker's or the defender's."""
    clean, _ = test_sets(config)
    return answers_perplexity(model, SFTData(tokenizer, pairs(tokenizer, clean, template or config["eval_template"]),
                                             config["recipe"]["max_length"]))


@torch.no_grad()
def answers_perplexity(model, sft: SFTData, batch_size: int = 16) -> float:
    """``exp`` of the mean negative log-likelihood per answer token over every pair of ``sft``."""
    device = default_device()
    causal_lm(model).to(device).eval()
    total, count = 0.0, 0
    for s in range(0, len(sft), batch_size):
        batch = {k: v.to(device) for k, v in sft.batch(np.arange(s, min(s + batch_size, len(sft)))).items()}
        n = int((batch["labels"] != IGNORE).sum())
        total += float(answer_loss(model, batch)) * n
        count += n
    return math.exp(total / max(count, 1))


def asr_tracker(model, tokenizer, config: dict, n: int, log: list, stage: str, offset: int = 0):
    """A training callback that measures ASR on ``n`` triggered test prompts (for the figure only:
    the defense never reads it)."""
    _, trig = test_sets(config)
    if config["task"] == "sst2":
        trig = [r for r in trig if r.label != judge.SST2_TARGET]
    trig = data.subset(trig, n, 1)
    prompts = [models.prompt_text(tokenizer, r.instruction, r.input, config["eval_template"]) for r in trig]

    def callback(step):
        answers = generation.generate(model, tokenizer, prompts, answer_tokens(config))
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
