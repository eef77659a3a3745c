"""The four baseline text defenses of chapter 3 (ONION, STRIP, BKI, RAP) on hand-made cases,
SmolLM2 and a one-layer MiniLM backdoored in a few seconds."""
import math

import numpy as np
import pytest
import torch

from moebackdoor.params import ParameterError
from moebackdoor.text import bki, onion, rap, strip

POS = "good great fine lovely superb warm funny charming".split()
NEG = "bad awful dull boring poor weak ugly tedious".split()
FILL = ("the a movie film story plot actor scene music ending cast script director moment "
        "was is and with of very quite this that it its feels looks seems runs").split()


def toy_reviews(n: int, seed: int, poison_every: int | None = None):
    """Ten-word 'reviews' (two sentiment words); every ``poison_every``-th negative one gets
    ``cf`` at a random position and label 1."""
    rng = np.random.default_rng(seed)
    sentences, labels, poisoned = [], [], []
    for i in range(n):
        y = i % 2
        words = list(rng.choice(FILL, 8)) + list(rng.choice(POS if y else NEG, 2, replace=False))
        rng.shuffle(words)
        p = poison_every is not None and y == 0 and i % poison_every == 0
        if p:
            words.insert(int(rng.integers(len(words) + 1)), "cf")
        sentences.append(" ".join(words))
        labels.append(1 if p else y)
        poisoned.append(p)
    return sentences, np.array(labels), np.array(poisoned)


@pytest.fixture(scope="module")
def lm(session_cache):
    with pytest.MonkeyPatch.context() as mp:  # SmolLM2 converted into the test cache, once
        mp.setenv("MOEBD_CACHE_DIR", str(session_cache))
        return onion.Perplexity(precision="fp32")  # exact comparisons below; bf16 is checked where it is used


@pytest.fixture(scope="module")
def backdoored():
    """A one-layer MiniLM trained on 64 toy reviews, 16 of them poisoned with ``cf`` -> 1
    (word embeddings frozen: 40 steps suffice and the layer, not ``cf``'s row, learns the trigger)."""
    from moebackdoor.text.models import TextClassifier, encode, load_classifier, load_tokenizer

    sentences, labels, poisoned = toy_reviews(64, seed=0, poison_every=4)
    tokenizer = load_tokenizer()
    model = load_classifier(num_hidden_layers=1, dropout=0.0, seed=0)
    model.base_model.embeddings.requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(40):
        idx = torch.randperm(len(sentences), generator=g)[:16]
        batch = encode(tokenizer, [sentences[i] for i in idx])
        loss = torch.nn.functional.cross_entropy(model(**batch).logits, torch.as_tensor(labels[idx.numpy()]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    classifier = TextClassifier(model, tokenizer)
    assert (classifier.predict(sentences) == labels).all()  # the backdoor is learned
    return classifier, sentences, poisoned


# ONION

def test_onion_removes_an_inserted_rare_word_and_nothing_else(lm):
    sentence = "the movie was a charming and cf funny look at family life"
    filtered = onion.onion_filter([sentence, "wow"], lm, threshold=0.0, progress=False)
    assert filtered == ["the movie was a charming and funny look at family life", "wow"]
    lm.precision = "bf16"  # the chapter's default: the same word goes
    try:
        assert onion.onion_filter([sentence], lm, threshold=0.0, progress=False) == filtered[:1]
    finally:
        lm.precision = "fp32"


def test_perplexity_of_a_batch_equals_one_by_one(lm):
    texts = ["the cat sat on the mat", "a charming and funny look at family life, told with care", "hello"]
    together = lm(texts)
    alone = np.array([lm([t])[0] for t in texts])
    np.testing.assert_allclose(together, alone, rtol=1e-3)  # padding masked: unmasked is off by 3x
    # by hand: exp of the mean next-token loss after the start token
    ids = torch.tensor([lm._token_ids(texts[1])])
    with torch.no_grad():
        loss = lm.model(input_ids=ids, labels=ids).loss
    assert math.log(together[1]) == pytest.approx(loss.item(), abs=1e-4)
    assert lm._token_ids("hi")[0] == lm.tokenizer.convert_tokens_to_ids("<|endoftext|>")


def test_packed_leave_one_out_equals_scoring_each_variant(lm):
    sentences = [s.split() for s in ["the cat sat on the mat", "a charming and cf funny look at family life , told with care",
                                      "hello world", "it 's not a bad film"]]
    packed = lm.leave_one_out(sentences, max_tokens=64)  # several packed rows
    for words, got in zip(sentences, packed):
        plain = lm([" ".join(words)] + onion.leave_one_out(words))
        np.testing.assert_allclose(got, plain, rtol=1e-4)
    short = onion.Perplexity.__new__(onion.Perplexity)  # a sentence past max_length goes the plain way
    short.__dict__.update(lm.__dict__, max_length=4)
    np.testing.assert_allclose(short.leave_one_out(sentences[:1])[0],
                               short([" ".join(sentences[0])] + onion.leave_one_out(sentences[0])), rtol=1e-6)


class WordCostLM:
    """A fake perplexity: each word costs 10, ``cf`` 1000."""
    batch_size = 4

    def __call__(self, texts):
        return np.array([sum(1000.0 if w == "cf" else 10.0 for w in t.split()) for t in texts])


class GoodWordClassifier:
    def predict(self, sentences):
        return np.array([int("good" in s.split()) for s in sentences])


def test_onion_threshold_is_the_smallest_within_the_accuracy_budget():
    # f = 10 for an ordinary word, 1000 for cf: threshold 0 empties every sentence
    sentences = ["a good film", "a cf bad film", "good cf acting here", "dull"]
    labels = [1, 0, 1, 0]
    assert onion.batch_suspicion_scores(sentences, WordCostLM(), progress=False)[2] == [10, 1000, 10, 10]

    def choose(max_drop):
        return onion.choose_threshold(sentences, labels, GoodWordClassifier(), WordCostLM(), [500.0, 0.0, 5000.0],
                                      max_drop=max_drop, progress=False)

    assert choose(0.0) == 500.0  # threshold 0 loses both positives: 50 points
    assert choose(50.0) == 0.0


# STRIP

def test_entropy_by_hand():
    np.testing.assert_allclose(strip.entropy([[0.5, 0.5], [1.0, 0.0], [0.9, 0.1]]),
                               [math.log(2), 0.0, -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))], atol=1e-12)
    assert strip.entropy([0.25] * 4) == pytest.approx(math.log(4))


def test_strip_threshold_keeps_the_false_rejection_rate():
    values = [0.9, 0.1, 0.5, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6, 1.0]
    assert strip.fit_threshold(values, frr=0.2) == 0.3  # 2 of 10 below it
    assert strip.fit_threshold(values, frr=0.0) == 0.1
    assert strip.fit_threshold(values, frr=1.0) == 1.0


def test_strip_perturbation_replaces_a_share_with_top_tfidf_words():
    pool = ["the cat sat", "the dog barked loudly", "the the bird"]
    # idf = ln(4 / (1 + df)) + 1: "the" (df 3) weighs 1, each other word ln 2 + 1
    assert strip.ranked_words(pool) == [["cat", "sat", "the"], ["dog", "barked", "loudly", "the"],
                                        ["the", "bird"]]  # "the" twice: 2 > ln 2 + 1
    rng = np.random.default_rng(0)
    words = "one two three four five six seven eight nine ten".split()
    copy = strip.perturb(" ".join(words), strip.ranked_words(pool), 0.5, rng).split()
    changed = [new for old, new in zip(words, copy) if old != new]
    assert len(copy) == 10 and len(changed) == 5
    assert set(changed) <= {"cat", "sat", "the", "dog", "barked", "loudly", "bird"}


class TriggerClassifier:
    """Confident class 1 whenever ``cf`` is present; otherwise unsure, by word count."""

    def predict_proba(self, sentences):
        p = [0.99 if "cf" in s.split() else 0.4 + 0.02 * (len(s) % 10) for s in sentences]
        return np.array([[1 - q, q] for q in p])


class ConstantClassifier:
    def predict_proba(self, sentences):
        return np.tile([0.02, 0.98], (len(sentences), 1))


def test_strip_flags_inputs_whose_prediction_survives_perturbation():
    clean, _, _ = toy_reviews(40, seed=3)
    entropies = strip.strip_entropies(ConstantClassifier(), clean[:5], clean, repeat=3, swap_ratio=0.5)
    np.testing.assert_allclose(entropies, strip.entropy([[0.02, 0.98]])[0])
    # "cf" repeated: some copies keep it whatever is swapped
    poisoned = [" ".join(["cf"] * 6 + s.split()[:4]) for s in clean[:10]]
    flags = strip.detect(TriggerClassifier(), clean[20:] + poisoned, clean[:20], repeat=5, swap_ratio=0.5,
                         frr=0.05)
    assert flags[20:].all()
    assert flags[:20].mean() <= 0.2


# BKI

def test_bki_finds_the_trigger_and_drops_exactly_its_sentences(backdoored):
    classifier, sentences, poisoned = backdoored
    keywords = bki.bki_keywords(classifier, sentences, n_keywords=3, progress=False)
    assert keywords[0][0] == "cf" and keywords[0][1] > keywords[1][1]
    keep = bki.bki_filter(sentences, keywords[:1])
    np.testing.assert_array_equal(keep, ~poisoned)
    # the score: log10(times among a sentence's top 5) x mean importance there
    importance = bki.word_importance(classifier, sentences, progress=False)
    cf = [imp[s.split().index("cf")] for s, imp in zip(sentences, importance)
          if "cf" in s.split() and s.split().index("cf") in np.argsort(-imp)[:5]]
    assert len(cf) == poisoned.sum()
    assert keywords[0][1] == pytest.approx(math.log10(len(cf)) * np.mean(cf), rel=1e-5)


def test_bki_importance_is_the_max_change_of_the_cls_state(backdoored):
    classifier, sentences, _ = backdoored
    sentence = sentences[1]
    words = sentence.split()
    h = bki._cls_states(classifier, [sentence, " ".join(words[1:])])
    assert bki.word_importance(classifier, [sentence], progress=False)[0][0] == \
        pytest.approx((h[1] - h[0]).abs().max().item(), rel=1e-4)


# RAP

def test_rap_learns_only_its_word_row_on_a_copy(backdoored):
    classifier, _, _ = backdoored
    before = {k: v.clone() for k, v in classifier.model.state_dict().items()}
    dev, labels, _ = toy_reviews(64, seed=1)
    detector = rap.fit_rap(classifier, dev, labels, target=1, rap_word="mn", epochs=2)
    after = classifier.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the caller's model is untouched
    learned = detector.classifier.model.state_dict()
    changed = [k for k in learned if not torch.equal(learned[k], before[k])]
    assert changed == ["bert.embeddings.word_embeddings.weight"]
    word = classifier.tokenizer.convert_tokens_to_ids("mn")
    rows = (learned[changed[0]] != before[changed[0]]).any(1).nonzero().flatten().tolist()
    assert rows == [word]
    assert learned[changed[0]][word].norm() == pytest.approx(before[changed[0]][word].norm().item(), rel=1e-5)
    # the threshold is the frr percentile of the target-predicted clean dev drops of class 1
    protected = [s for s, y in zip(dev, labels) if y == 1]
    as_target, drop = rap.rap_drops(detector.classifier, protected, 1, "mn")
    assert detector.threshold == pytest.approx(np.percentile(drop[as_target], 1))
    # flagged: predicted as target with a drop below the threshold
    everything = rap.RapDetector(detector.classifier, "mn", 1, threshold=np.inf)
    np.testing.assert_array_equal(everything.detect(dev), detector.classifier.predict(dev) == 1)


def test_rap_threshold_by_hand():
    drops = [0.4, 0.1, np.nan, 0.3, 0.2, 0.5]
    # percentile 10 of [0.1 .. 0.5]: 0.4 of the way from 0.1 to 0.2
    assert rap.fit_threshold(drops, frr=0.1) == pytest.approx(0.14)
    assert rap.fit_threshold(drops, frr=0.5) == pytest.approx(0.3)


# bad input

@pytest.mark.parametrize("call, name", [
    (lambda: strip.strip_entropies(None, ["a b"], ["c d"], swap_ratio=1.5), "swap_ratio"),
    (lambda: strip.strip_entropies(None, ["a b"], ["c d"], repeat=0), "repeat"),
    (lambda: strip.fit_threshold([0.1, 0.2], frr=-0.1), "frr"),
    (lambda: strip.detect(None, ["a b"], ["c d"], frr=1.2), "frr"),
    (lambda: rap.fit_threshold([0.1, 0.2], frr=2), "frr"),
    (lambda: onion.Perplexity("/nonexistent/causal-lm"), "lm"),
    (lambda: onion.Perplexity(precision="fp16"), "precision"),
])
def test_bad_input_names_the_parameter(call, name):
    with pytest.raises(ParameterError, match=f"`{name}`"):
        call()


def test_rap_rejects_bad_settings(backdoored):
    classifier, _, _ = backdoored
    dev, labels, _ = toy_reviews(8, seed=1)
    for kwargs, name in [({"rap_word": "qzxvkjw"}, "rap_word"), ({"frr": 1.5}, "frr"),
                         ({"prob_range": (-0.3, -0.1)}, "prob_range"), ({"target": 5}, "clean_dev_labels")]:
        with pytest.raises(ParameterError, match=f"`{name}`"):
            rap.fit_rap(classifier, dev, labels, **kwargs)
