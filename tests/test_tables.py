"""The book's one table style, on hand-made tables."""
import numpy as np
import pandas as pd

from moebackdoor import tables


def test_headers_read_as_words():
    assert tables.header("poison_rate") == "poison rate (%)"
    assert tables.header("expert_1") == "expert 1"
    assert tables.header("asr_by_trigger") == "ASR by trigger"
    assert tables.header("cacc") == "CACC (%)"
    assert tables.header("ASR ours") == "ASR ours"  # already a reader's header
    assert tables.header(("asr", "mean")) == "ASR (%) mean"


def test_view_drops_the_index_rounds_and_spells_booleans():
    df = pd.DataFrame({"method": ["npoe", "dpoe"], "asr": [91.234, 4.04], "cacc": [82.0, np.nan],
                       "beta": [1.0, 5.0], "n_train": [6920, 800], "chosen": np.array([True, False])})
    v = tables.view(df.set_index("method"))
    body = v.data
    assert list(body.columns) == ["method", "ASR (%)", "CACC (%)", "beta", "training rows", "chosen"]
    assert body.iloc[0].tolist() == ["npoe", "91.2", "82.0", "1", "6,920", "yes"]
    assert body.iloc[1].tolist() == ["dpoe", "4.0", "—", "5", "800", "no"]
    html = v.to_html()
    assert 'class="book-table"' in html and "row_heading" not in html
    assert "…" not in html and "..." not in html


def test_a_plain_index_is_dropped_and_digits_can_differ_per_column():
    df = pd.DataFrame({"measure": ["a", "b"], "value": [1.2345, np.nan]})
    v = tables.view(df, digits={"value": 2}, missing="not measured")
    assert list(v.data.columns) == ["measure", "value"]
    assert v.data.value.tolist() == ["1.23", "not measured"]


def test_long_cells_are_never_cut():
    text = "a sentence long enough that pandas would cut it with an ellipsis in its plain repr " * 3
    assert text.strip() in tables.html(pd.DataFrame({"note": [text.strip()]}))


def test_row_labels_stay_and_row_numbers_go():
    # unnamed labels (a table of methods, a knob per row) are the table's first column
    df = pd.DataFrame({"asr": [90.0, 4.0]}, index=["No defense", "NPoE"])
    v = tables.view(df)
    assert v.data.iloc[:, 0].tolist() == ["No defense", "NPoE"] and v.data.columns[0].strip() == ""
    two = pd.DataFrame({"asr": [1.0]}, index=pd.MultiIndex.from_tuples([("sst2", "mix3")]))
    assert tables.view(two).data.iloc[0].tolist()[:2] == ["sst2", "mix3"]
    # what filtering leaves of 0, 1, 2… only numbers the rows
    kept = pd.DataFrame({"asr": [1.0, 2.0, 3.0]})[lambda d: d.asr > 1]
    assert list(tables.view(kept).data.columns) == ["ASR (%)"]


def test_huge_numbers_read_as_powers_of_ten():
    assert tables.view(pd.DataFrame({"perplexity": [1.1402e14, 3.14159]})).data.perplexity.tolist() == ["1.1e+14", "3.1"]
