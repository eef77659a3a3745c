import pytest

from moebackdoor.vision.attacks import attack_config, attack_grid, attack_results


@pytest.mark.parametrize("kwargs,match", [
    ({"trigger": "sqaure", "rate": 0.02}, "unknown trigger 'sqaure'"),
    ({"trigger": "square", "rate": 1.5}, r"parameter `poison_rate`: expected a fraction in \[0, 1\]"),
    ({"trigger": None, "rate": 0.02}, "clean run"),
    ({"trigger": "square", "rate": 0.02, "dataset": "svhn"}, "parameter `dataset`: expected one of"),
    ({"trigger": "square", "rate": 0.02, "profile_name": "huge"}, "parameter `profile`: expected one of"),
    ({"trigger": "square", "rate": 0.02, "lr": 1}, "unknown setting"),
])
def test_bad_configuration_fails_fast(kwargs, match):
    args = {"profile_name": "smoke", "dataset": "cifar10", "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=match):
        attack_config(**args)


def test_grid_has_a_clean_run_per_dataset_and_seed():
    configs = attack_grid("smoke", datasets=["cifar10"], triggers=["square", "warp"], rates=[0.1],
                          seeds=[0, 1], trigger_overrides={"warp": {"variant": "wanet"}})
    assert [c["trigger"] for c in configs] == [None, "square", "warp"] * 2
    assert configs[2]["trigger_params"]["variant"] == "wanet"
    with pytest.raises(ValueError, match="parameter `triggers`: expected a non-empty list of items"):
        attack_grid("smoke", triggers=["squares"])


def test_a_tiny_attack_run_end_to_end(companion_env):
    configs = attack_grid("smoke", datasets=["gtsrb"], triggers=["square"], rates=[0.1], seeds=[0],
                          n_train=300, n_test=200)
    df = attack_results(configs)
    row = df[df.trigger == "square"].iloc[0]
    assert row.n_poisoned == 30 and 0 <= row.asr <= 100
    assert row.cad == pytest.approx(df[df.trigger == "clean"].ba.iloc[0] - row.ba)


def test_noise_mode_applies_to_the_wanet_warp_only():
    configs = attack_grid("smoke", datasets=["cifar10"], triggers=["square", "warp"], rates=[0.1],
                          seeds=[0], trigger_overrides={"warp": {"variant": "wanet"}}, wanet_noise_mode=True)
    assert [(c["trigger"], c["cross_ratio"]) for c in configs] == [(None, 0), ("square", 0), ("warp", 2.0)]
    authors = attack_grid("smoke", datasets=["cifar10"], triggers=["warp"], rates=[0.1], seeds=[0],
                          wanet_noise_mode=True)
    assert authors[1]["cross_ratio"] == 0
