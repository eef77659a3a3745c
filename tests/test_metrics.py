import pytest

from moebackdoor.metrics import accuracy, attack_success_rate, clean_accuracy_drop


def test_metrics_on_a_hand_made_prediction_set():
    labels = [0, 0, 1, 2, 3, 3]
    clean_pred = [0, 1, 1, 2, 0, 3]  # 4 of 6 right
    triggered_pred = [0, 0, 0, 2, 0, 0]  # of the 4 non-target images, 3 go to 0
    assert accuracy(clean_pred, labels) == pytest.approx(100 * 4 / 6)
    # the two target-class images are excluded from ASR, though predicted 0
    assert attack_success_rate(triggered_pred, labels, target=0) == pytest.approx(75.0)
    # for target 2, the one image predicted 2 is itself of class 2: excluded
    assert attack_success_rate(triggered_pred, labels, target=2) == 0.0
    assert attack_success_rate([2, 2, 1, 2, 0, 3], labels, target=2) == pytest.approx(40.0)
    assert clean_accuracy_drop(85.0, 83.2) == pytest.approx(1.8)


def test_asr_needs_non_target_samples():
    with pytest.raises(ValueError, match="non-target"):
        attack_success_rate([0, 0], [0, 0], target=0)


def test_a_bench_table_shows_an_unmeasured_value_instead_of_failing():
    import pandas as pd

    from moebackdoor.reporting import bench_view

    df = pd.DataFrame({"measure": ["rate", "cost"], "value": [1.234, float("nan")], "target": [None, "goal <= 1"]})
    html = bench_view(df).to_html()
    assert "1.23" in html and "not measured" in html and "goal <= 1" in html
