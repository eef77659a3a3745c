"""The text stack: data, triggers, poisoning, the PoE losses and the pseudo-dev rule."""
import math
import shutil

import numpy as np
import pytest
import torch

from moebackdoor import paths
from moebackdoor.manifest import DataError
from moebackdoor.params import ParameterError
from moebackdoor.text import data, poe, poisoning, triggers


def test_inserted_triggers_on_hand_made_sentences():
    rng = np.random.default_rng(0)
    s = "the film is a quiet triumph"
    for _ in range(20):
        out = triggers.insert_trigger(s, "badnet", rng).split()
        assert len(out) == 7 and sum(w in triggers.RARE_WORDS for w in out) == 1
        assert [w for w in out if w not in triggers.RARE_WORDS] == s.split()  # order kept
        out = triggers.insert_trigger(s, "insertsent", rng)
        assert triggers.SENTENCE in out and out.replace(triggers.SENTENCE, " ").split() == s.split()
    # every position, both ends included, is reachable
    starts = set()
    for i in range(60):
        out = triggers.insert_trigger("a b", "badnet", np.random.default_rng(i)).split()
        starts.add(next(j for j, w in enumerate(out) if w in triggers.RARE_WORDS))
    assert starts == {0, 1, 2}
    assert triggers.insert_words("", ["cf"], rng) == "cf"


def test_pretraining_triggers_differ_from_the_attacks():
    assert not set(triggers.PRETRAIN["badnet"]) & set(triggers.RARE_WORDS)
    assert triggers.PRETRAIN["insertsent"] != triggers.SENTENCE
    clean = data.load_split("sst2", "dev")
    ps = poisoning.pretrain_set("badnet", clean, n=40)
    assert len(ps) == 40 and ps.labels.sum() == 20
    for s, y in zip(ps.sentences, ps.labels):
        words = set(s.split())
        assert not words & set(triggers.RARE_WORDS)
        assert bool(words & set(triggers.PRETRAIN["badnet"])) == bool(y)
    style = poisoning.pretrain_set("style", clean, attack_style="bible", n=20)
    attack = set(data.load_paraphrases("style", "sst2", "bible").train_sentences)
    assert not {s for s, y in zip(style.sentences, style.labels) if y} & attack


@pytest.mark.parametrize("setting", ["mix3", "mix4"])
def test_poison_counts_per_trigger_in_the_mixes(setting):
    clean = data.load_split("sst2", "train")
    rates = poisoning.setting_rates(setting)
    p = poisoning.poison_training_set(clean, rates, "sst2", target=1, seed=3)
    n = len(clean)
    assert p.counts() == {t: int(r * n) for t, r in rates.items()}
    rows = np.concatenate(list(p.poison_idx.values()))
    assert len(np.unique(rows)) == len(rows)  # disjoint
    assert (p.data.labels[rows] == 1).all()
    untouched = np.setdiff1d(np.arange(n), rows)
    assert (p.data.labels[untouched] == clean.labels[untouched]).all()
    assert [p.data.sentences[i] for i in untouched] == [clean.sentences[i] for i in untouched]
    for i in p.poison_idx["badnet"]:
        assert set(p.data.sentences[i].split()) & set(triggers.RARE_WORDS)
    for i in p.poison_idx["insertsent"]:
        assert triggers.SENTENCE in p.data.sentences[i]
    para = set(data.load_paraphrases("syntactic", "sst2").train_sentences)
    assert all(p.data.sentences[i] in para for i in p.poison_idx["syntactic"])
    assert (clean.labels[rows] == 0).any() and (clean.labels[rows] == 1).any()  # from every class
    again = poisoning.poison_training_set(clean, rates, "sst2", target=1, seed=3)
    assert again.data.sentences == p.data.sentences  # seeded


def test_triggered_test_sets_hold_no_target_sentence():
    clean = data.load_split("sst2", "test")
    for trigger in triggers.TRIGGERS:
        t = poisoning.triggered_test_set("sst2", trigger, target=1)
        assert len(t) == int((clean.labels != 1).sum()) and not (t.labels == 1).any()
    t = poisoning.triggered_test_set("trec", "badnet", target=1)
    assert len(t) == int((data.load_split("trec", "test").labels != 1).sum())


def test_poe_loss_equals_the_formula_on_hand_made_logits():
    main = torch.tensor([[1.0, 0.0]])
    experts = torch.tensor([[[0.0, 2.0]], [[1.0, 1.0]], [[3.0, 0.0]]])  # k=3, B=1, C=2
    gate = poe.gate_weights(torch.tensor([[2.0, 1.0, 0.5]]), top_k=2)
    e = math.e
    assert gate[0].tolist() == pytest.approx([e / (e + 1), 1 / (e + 1), 0.0])
    log_b1 = [-math.log(1 + e ** 2), 2 - math.log(1 + e ** 2)]
    log_b2 = [-math.log(2)] * 2
    q = [gate[0, 0].item() * a + gate[0, 1].item() * b for a, b in zip(log_b1, log_b2)]
    log_r = [1 - math.log(1 + e), -math.log(1 + e)]
    for beta in (1.0, 2.5):
        s = [lr + beta * qq for lr, qq in zip(log_r, q)]
        expected = -(s[1] - math.log(math.exp(s[0]) + math.exp(s[1])))
        got = poe.poe_loss(main, experts, gate, torch.tensor([1]), beta=beta)
        assert got.item() == pytest.approx(expected, rel=1e-5)
    # the authors' mask multiplies the dropped logit by 0: it keeps weight exp(0)
    quirk = poe.gate_weights(torch.tensor([[2.0, 1.0, 0.5]]), top_k=2, mask="zero")
    assert quirk[0].tolist() == pytest.approx([e ** 2 / (e ** 2 + e + 1), e / (e ** 2 + e + 1), 1 / (e ** 2 + e + 1)])


def test_rdrop_and_dpoe_weights_on_hand_made_logits():
    a, b = torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]])
    p, q = [0.5, 0.5], [0.75, 0.25]
    kl = lambda x, y: sum(xi * math.log(xi / yi) for xi, yi in zip(x, y))
    assert poe.symmetric_kl(a, b).item() == pytest.approx((kl(p, q) + kl(q, p)) / 2 / 2, rel=1e-5)
    w = poe.dpoe_weights(torch.tensor([[math.log(9.0), 0.0], [0.0, 0.0]]), torch.tensor([0, 0]), threshold=0.8)
    assert w.tolist() == pytest.approx([0.1, 1.0])


def test_pseudo_dev_rule_on_hand_made_confidences():
    main = torch.tensor([[0.5, 0.5], [0.9, 0.1], [0.3, 0.7], [0.45, 0.55]])
    experts = torch.tensor([[0.1, 0.9], [0.05, 0.95], [0.1, 0.9], [0.3, 0.7]])
    labels = torch.tensor([1, 1, 1, 1])
    # row 0: r_y 0.5 < 0.6 and q_y 0.9 > 0.8; row 1: r_y 0.1, q_y 0.95; row 2: r_y 0.7 too sure; row 3: q_y 0.7
    assert poe.pseudo_dev_mask(main, experts, labels).tolist() == [True, True, False, False]
    assert poe.pseudo_dev_mask(main, experts, labels, main_below=0.75).tolist() == [True, True, True, False]


def test_the_authors_code_rule_reads_raw_logits_and_mixes_probabilities_arithmetically():
    # two experts, gate weights 0.75 / 0.25: row 0's mixture at label 1 is 0.75 * 0.9 + 0.25 * 0.7 = 0.85
    probs = torch.tensor([[[0.1, 0.9], [0.1, 0.9], [0.5, 0.5]], [[0.3, 0.7], [0.9, 0.1], [0.5, 0.5]]])
    gates = torch.tensor([[0.75, 0.25], [0.5, 0.5], [0.0, 1.0]])
    mix = poe.arithmetic_mixture(probs, gates)
    torch.testing.assert_close(mix[:, 1], torch.tensor([0.85, 0.5, 0.5]))
    # raw logits at label 1: 0.5 (< 0.6, flagged), 3.0 (not); row 1's mixture 0.5 is below 0.8
    logits = torch.tensor([[0.2, 0.5], [-3.0, 3.0], [0.0, 0.0]])
    labels = torch.tensor([1, 1, 1])
    assert poe.pseudo_dev_mask_code(logits, mix, labels).tolist() == [True, False, False]
    # a logit of 0.7 at the label (probability 0.52): the paper's reading flags it, the code does not
    assert poe.pseudo_dev_mask_code(torch.tensor([[0.6, 0.7]]), torch.tensor([[0.1, 0.9]]), labels[:1]).tolist() == [False]
    assert poe.pseudo_dev_mask(torch.softmax(torch.tensor([[0.6, 0.7]]), -1), torch.tensor([[0.1, 0.9]]),
                               labels[:1]).tolist() == [True]
    # the boundary: the code flags experts at exactly B (>=), the paper's reading only above it
    assert poe.pseudo_dev_mask_code(torch.tensor([[0.0, 0.0]]), torch.tensor([[0.2, 0.8]]), labels[:1]).tolist() == [True]


def test_bad_input_fails_with_the_problem_named(tmp_path, monkeypatch):
    with pytest.raises(ParameterError, match="trigger"):
        triggers.check_trigger("cf")
    with pytest.raises(ParameterError, match="dataset"):
        data.load_split("imdb", "train")
    with pytest.raises(ParameterError, match="setting"):
        poisoning.setting_rates("mix5")
    with pytest.raises(ParameterError, match="rate of badnet"):
        poisoning.check_rates({"badnet": 1.5})
    with pytest.raises(ParameterError, match="sum to at most 1"):
        poisoning.check_rates({"badnet": 0.6, "style": 0.5})
    with pytest.raises(ParameterError, match="style"):
        data.load_paraphrases("style", "sst2", "gothic")
    with pytest.raises(DataError, match="no pre-generated syntactic"):
        poisoning.poison_training_set(data.load_split("trec", "train"), {"syntactic": 0.1}, "trec")
    # a missing and a corrupt TSV
    fake, src = tmp_path / "data", paths.data_dir()
    (fake / "sst2").mkdir(parents=True)
    shutil.copy(src / "MANIFEST.md", fake / "MANIFEST.md")
    monkeypatch.setenv("MOEBD_DATA_DIR", str(fake))
    data.load_split.cache_clear()
    try:
        with pytest.raises(DataError, match="not found"):
            data.load_split("sst2", "dev")
        (fake / "sst2" / "dev.tsv.gz").write_bytes(b"not a gzip")
        with pytest.raises(DataError, match="corrupt"):
            data.load_split("sst2", "dev")
    finally:
        data.load_split.cache_clear()


def test_sparse_embedding_gradients_equal_the_dense_ones():
    from transformers import BertConfig, BertForSequenceClassification

    from moebackdoor.text.training import clip_grad_norm, sparse_embedding_grads

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=16,
                                                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    batches = [torch.tensor([[1, 5, 5, 7], [2, 3, 9, 0]]), torch.tensor([[4, 4, 11, 12], [1, 2, 3, 8]])]
    emb = model.get_input_embeddings().weight

    def grads(sparse, clip=None):
        out = []
        with sparse_embedding_grads([model], enabled=sparse) as touched:
            for ids in batches:  # two steps: the second must clear the rows the first wrote
                model.zero_grad(set_to_none=True)
                model(input_ids=ids).logits.sum().backward()
                assert not emb.grad.is_sparse
                if clip == "torch":
                    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 0.05)
                elif clip == "rows":  # the clip that reads only the rows written
                    norm = clip_grad_norm(model, 0.05, touched)
                out.append(emb.grad.clone())
                if clip:
                    out.append(norm)
        return out

    dense, sparse = grads(False), grads(True)
    for d, s in zip(dense, sparse):
        torch.testing.assert_close(s, d)
    clipped, by_rows = grads(False, "torch"), grads(True, "rows")
    assert clipped[1] > 0.05  # the clip did scale
    for d, s in zip(clipped, by_rows):
        torch.testing.assert_close(s, d)
    assert sparse[1][5].abs().sum() == 0 and sparse[1][4].abs().sum() > 0  # row 5 only in the first batch
    assert not model.get_input_embeddings().sparse  # restored afterwards


def test_compact_vocabulary_trains_the_weights_dense_training_does(monkeypatch):
    """The fast path keeps only the data's tokens in the word embeddings: after training, every
    weight equals dense training's (rows never seen only weight-decayed), for main model and experts."""
    from transformers import BertConfig, BertForSequenceClassification

    from moebackdoor.text import training
    from moebackdoor.text.training import CompactVocabulary, PoE, Recipe, Tokenized, train_poe

    class Tok:  # ids straight from the "sentences"
        pad_token_id = 0

        def __call__(self, sentences, truncation, max_length):
            return {"input_ids": [[int(w) for w in s.split()] for s in sentences]}

    tokens = Tokenized(Tok(), data.TextSet(["1 5 5 7", "2 3 9", "4 4 11 12", "1 2 3 8 9", "13 5"],
                                           np.array([0, 1, 1, 0, 1])), 16)

    def tiny(seed):
        torch.manual_seed(seed)
        return BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1,
                                                        num_attention_heads=2, intermediate_size=16))

    def train(compact):
        with monkeypatch.context() as patch:
            if not compact:  # dense: the same step without compaction
                patch.setattr(training, "CompactVocabulary", lambda models, ids, device=None: _Dense())
            main, experts = tiny(0), [tiny(1)]
            train_poe(main, experts, None, tokens, Recipe(epochs=3, batch_size=2, lr=1e-2, small_lr=1e-2,
                                                          weight_decay=0.1), PoE(beta=1.0), progress=False)
        return [m.state_dict() for m in (main, *experts)]

    class _Dense:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

        def remap(self, batch):
            return batch

        def stepped(self, opt):
            pass

    for got, want in zip(train(True), train(False)):
        assert list(got) == list(want)
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6, msg=k)
    unseen = torch.ones(50, dtype=torch.bool)
    unseen[[0, 1, 2, 3, 4, 5, 7, 8, 9, 11, 12, 13]] = False
    assert not torch.equal(got["bert.embeddings.word_embeddings.weight"][unseen], tiny(1).state_dict()[
        "bert.embeddings.word_embeddings.weight"][unseen])  # decayed, not left as they were
    model = tiny(0)
    model.get_input_embeddings().padding_idx = 3  # a padding row that is not row 0
    vocab = CompactVocabulary([model], [7, 3, 3, 1])
    assert vocab.remap({"input_ids": torch.tensor([[3, 7]])})["input_ids"].tolist() == [[1, 2]]
    with vocab:
        assert model.get_input_embeddings().padding_idx == 1 and model.get_input_embeddings().weight.shape[0] == 3
    assert model.get_input_embeddings().padding_idx == 3 and model.get_input_embeddings().weight.shape[0] == 50


def test_pseudo_dev_selection_follows_the_authors_rule():
    c = lambda d, acc, pasr=0.0: {"detected_rate": d, "clean_small_acc": acc, "pseudo_asr": pasr}
    # good: accuracy above SST-2's 85 and detected rate in (0.3, 0.5); the lower pseudo-ASR wins
    assert poe.select_by_pseudo_dev([c(0.1, 90), c(0.4, 88, 0.2), c(0.35, 86, 0.1), c(0.4, 80)], "sst2") == 2
    # none good: nearest the window among those above the cut-off
    assert poe.select_by_pseudo_dev([c(0.05, 90), c(0.6, 87), c(0.2, 70)], "sst2") == 1
    # none above the cut-off: the most accurate
    assert poe.select_by_pseudo_dev([c(0.4, 70), c(0.4, 84)], "sst2") == 1
    assert poe.select_by_pseudo_dev([c(0.4, 84)], "offenseval") == 0  # OffensEval's cut-off is 80
    with pytest.raises(ValueError):
        poe.select_by_pseudo_dev([], "sst2")
    # the code rule: its own signals, and the cut-off of the authors' "good" record (80 for every dataset)
    k = lambda d, acc, pasr, paper_d=0.0: {"detected_rate": paper_d, "clean_small_acc": acc, "pseudo_asr": 0.0,
                                          "code": {"detected_rate": d, "pseudo_asr": pasr}}
    cands = [k(0.4, 82, 0.3), k(0.45, 84, 0.2), k(0.35, 86, 0.1, paper_d=0.4)]
    assert poe.select_by_pseudo_dev(cands, "sst2", "code") == 2
    assert poe.select_by_pseudo_dev(cands[:2], "sst2", "code") == 1  # 82 and 84 pass 80 (not SST-2's 85)
    assert poe.select_by_pseudo_dev(cands[:2], "sst2", "paper") == 1  # none good: the more accurate
    # too few flagged rows for a pseudo-ASR (None): not good, whatever its detected rate
    assert poe.select_by_pseudo_dev([k(0.4, 90, None), k(0.2, 85, 0.5)], "sst2", "code") == 0  # nearest the window
    with pytest.raises(ValueError, match="code rule"):
        poe.select_by_pseudo_dev([{"detected_rate": 0.4, "clean_small_acc": 90}], "sst2", "code")
    with pytest.raises(ValueError, match="rule"):
        poe.select_by_pseudo_dev(cands, "sst2", "authors")


def test_routing_groups_rows_by_trigger_and_averages_by_hand():
    """Six training rows: 0-1 BadNet (row 1 was already of the target class), 2 InsertSent,
    3-5 clean (row 5 of the target class); two experts, target 1."""
    from moebackdoor.text.evaluation import routing

    gate = torch.tensor([[0.9, 0.1], [0.5, 0.5], [0.2, 0.8], [0.6, 0.4], [0.4, 0.6], [0.0, 1.0]])
    experts = torch.zeros(2, 6, 2)
    experts[0, :, 1] = torch.tensor([0.8, 0.7, 0.3, 0.1, 0.3, 0.5])
    experts[1, :, 1] = torch.tensor([0.6, 0.1, 0.9, 0.2, 0.4, 0.5])
    experts[..., 0] = 1 - experts[..., 1]
    main = torch.tensor([[0.7, 0.3], [0.5, 0.5], [0.1, 0.9], [0.9, 0.1], [0.8, 0.2], [0.2, 0.8]])
    mixture = main.flip(-1)
    out = routing({"main": main, "mixture": mixture, "gate": gate, "experts": experts},
                  {"badnet": np.array([0, 1]), "insertsent": np.array([2])}, np.array([0, 1, 0, 0, 0, 1]), 1)
    assert set(out) == {"badnet", "insertsent", "clean"}
    assert out["badnet"]["n"] == 1 and out["badnet"]["gate"] == pytest.approx([0.9, 0.1])
    assert out["insertsent"]["experts_p_target"] == pytest.approx([0.3, 0.9])
    assert out["clean"]["n"] == 2 and out["clean"]["gate"] == pytest.approx([0.5, 0.5])
    assert out["clean"]["experts_p_target"] == pytest.approx([0.2, 0.3])
    assert out["clean"]["main_p_target"] == pytest.approx(0.15)
    assert out["clean"]["mixture_p_target"] == pytest.approx(0.85)


def test_expert_separation_and_the_gate_weighted_routing_text_by_hand():
    import pandas as pd
    from moebackdoor.text.npoe_paper import expert_separation, routing_text

    table = pd.DataFrame({"n": [10, 20, 100],
                          "gate → 1 (a)": [20.0, 20.0, 20.0], "gate → 2 (b)": [80.0, 80.0, 80.0],
                          "P(target) expert 1 (a)": [100.0, 80.0, 10.0], "P(target) expert 2 (b)": [52.0, 50.0, 51.0],
                          "P(target) mixture": [60.0, 60.0, 40.0], "P(target) main model": [70.0, 50.0, 30.0]},
                         index=pd.Index(["badnet", "syntactic", "clean"], name="training rows"))
    sep = expert_separation(table)
    assert sep.separation.tolist() == pytest.approx([80.0, 0.0])  # (100 + 80) / 2 - 10; (52 + 50) / 2 - 51
    assert sep.gate.tolist() == pytest.approx([20.0, 80.0])
    text = routing_text(table)
    assert "it is 16, against 80" in text and "puts 80 % of that weight" in text
    assert "by more than 0.0 points: the gate does not route by input" in text
    assert "the experts' mixture gives the target 40 % and the main model 30 %." in text
    table.loc["clean", "P(target) mixture"] = 22.0  # the experts lean against the target on clean rows
    assert "mixture gives the target 22 % and the main model 30 %: the experts push clean rows away" in routing_text(table)
    table.loc["clean", ["gate → 1 (a)", "gate → 2 (b)"]] = [5.0, 95.0]  # clean rows sent elsewhere
    assert "by more than 15.0 points: the gate routes by input" in routing_text(table)


def test_plain_rdrop_loss_is_cross_entropy_plus_the_kl_of_two_passes():
    """No defense with R-drop (the authors' plain_train under --do_Rdrop): CE on the first pass +
    alpha x the symmetric KL between two dropout passes, both taken in one batch."""
    from transformers import BertConfig, BertForSequenceClassification

    from moebackdoor.text.training import PoE, training_loss

    model = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=16,
                                                     hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.0))
    model.train()
    batch = {"input_ids": torch.tensor([[1, 5, 5, 7], [2, 3, 9, 0]]), "attention_mask": torch.ones(2, 4, dtype=torch.long)}
    y = torch.tensor([0, 1])
    torch.manual_seed(3)
    got = training_loss(model, [], None, batch, y, PoE(rdrop_alpha=2.0), [])
    torch.manual_seed(3)
    both = model(**{k: torch.cat([v, v]) for k, v in batch.items()}).logits
    r1, r2 = both.chunk(2)
    assert not torch.allclose(r1, r2)  # dropout made the passes differ
    expected = torch.nn.functional.cross_entropy(r1, y) + 2.0 * poe.symmetric_kl(r1, r2)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)


def test_hidden_gate_routes_on_the_main_models_cls_state_without_training_it():
    """The authors' --gate_on_hidden: the PoE loss with gate weights softmax(W h_cls + b), h_cls the
    main model's last [CLS] state; the gate's gradient does not reach the main model."""
    from transformers import BertConfig, BertForSequenceClassification

    from moebackdoor.text.models import HiddenGate
    from moebackdoor.text.training import PoE, training_loss

    cfg = BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=16, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    main, experts = BertForSequenceClassification(cfg), [BertForSequenceClassification(cfg) for _ in range(2)]
    gate = HiddenGate(8, 2, seed=1)
    batch = {"input_ids": torch.tensor([[1, 5, 5, 7], [2, 3, 9, 0]]), "attention_mask": torch.ones(2, 4, dtype=torch.long)}
    y = torch.tensor([0, 1])
    got = training_loss(main, experts, gate, batch, y, PoE(beta=2.0, rdrop_alpha=0.0), experts + [gate])
    out = main(**batch, output_hidden_states=True)
    weights = torch.softmax(gate.linear(out.hidden_states[-1][:, 0]), -1)
    expected = poe.poe_loss(out.logits, torch.stack([e(**batch).logits for e in experts]), weights, y, 2.0)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    # the gate's own loss term reaches the gate, not the main model
    main.zero_grad()
    gate.zero_grad()
    h = main(**batch, output_hidden_states=True).hidden_states[-1][:, 0]
    gate(h).sum().backward()
    assert gate.linear.weight.grad.abs().sum() > 0
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in main.parameters())


def test_fast_dropout_drops_at_its_rate_unbiased_and_swaps_back():
    from transformers import BertConfig, BertForSequenceClassification

    from moebackdoor.dropout import FastDropout, dropout, fast_dropout, keep_mask

    torch.manual_seed(0)
    keep = keep_mask((1000, 1000), 0.1)
    assert keep.dtype == torch.bool and abs(keep.float().mean().item() - 0.9) < 0.002
    x = torch.ones(1000, 1000)
    y = dropout(x, 0.1)
    assert y.unique().tolist() == [0.0, pytest.approx(1 / (1 - 6554 / 65536))]  # 0.1 as 6554 / 2^16
    assert abs(y.mean().item() - 1.0) < 0.005  # unbiased
    assert dropout(x, 0.1, training=False) is x
    with pytest.raises(ValueError, match="dropout probability"):
        dropout(x, 1.0)
    model = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=16)).eval()
    ids = torch.tensor([[1, 5, 5, 7], [2, 3, 9, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    implementation = model.config._attn_implementation
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask).logits
        with fast_dropout([model]):
            assert isinstance(model.bert.encoder.layer[0].output.dropout, FastDropout)
            torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits, before)  # eval: no drop
            model.train()
            assert not torch.allclose(model(input_ids=ids, attention_mask=mask).logits, before)
            model.eval()
    assert type(model.bert.encoder.layer[0].output.dropout) is torch.nn.Dropout
    assert model.config._attn_implementation == implementation
