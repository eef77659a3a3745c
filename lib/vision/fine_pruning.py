"""Fine-Pruning (Liu et al. 2018) on pMoE, as the pMoE authors implemented it.

For each of the experts' 1x1 convolutions (the model's last convolutional
layers), average the conv output per channel over clean training images, set
the kernel and bias of the ``int(rate * channels)`` channels with the lowest
means to zero (ascending order: negative means go first), then fine-tune on
clean data. The authors keep no mask, so fine-tuning may regrow the pruned
filters; ``persistent=True`` keeps them at zero. ``rate = 0`` is fine-tuning alone.
"""
from __future__ import annotations

import time

import torch
import torch.nn.utils.prune as prune

from .. import profiles
from ..metrics import accuracy, attack_success_rate
from ..executors import EXECUTORS
from ..params import check_bool, check_choice, check_list
from ..runcache import RunCache, config_hash
from .attacks import SCHEMA, attack_config, attack_grid, load_model, run_attack, run_label, run_trigger, test_tensors, train_tensors
from .datasets import load_dataset
from .poisoning import check_rate, triggered_test_set
from .routing import patch_masks, routing_rates
from .training import Recipe, _autocast, default_device, predict, train

STAGES = ("before", "after_pruning", "after_fine_tuning")


def expert_convs(model) -> list[torch.nn.Conv2d]:
    return [e.conv for e in model.experts]


@torch.no_grad()
def expert_channel_means(model, x: torch.Tensor, batch_size: int = 500) -> list[torch.Tensor]:
    """Per expert conv, the mean output of each channel over images x (and positions)."""
    device = default_device()
    model.eval().to(device)
    convs = expert_convs(model)
    sums = [torch.zeros(c.out_channels, dtype=torch.float64) for c in convs]

    def accumulate(k):
        def hook(module, inputs, output):  # must return None: a value would replace the output
            sums[k].add_(output.double().sum((0, 2, 3)).cpu())
        return hook

    hooks = [c.register_forward_hook(accumulate(k)) for k, c in enumerate(convs)]
    try:
        for i in range(0, len(x), batch_size):
            with _autocast(True, device):
                model(x[i:i + batch_size].to(device))
    finally:
        for h in hooks:
            h.remove()
        model.cpu()
    positions = len(x) * 8 * 8
    return [s / positions for s in sums]


def pruning_plan(means: list[torch.Tensor], rate: float) -> list[torch.Tensor]:
    """Per layer, the channels to prune: the ``int(rate * C)`` lowest means."""
    rate = check_rate(rate, "pruning_rate")
    return [torch.argsort(m)[: int(rate * len(m))] for m in means]


@torch.no_grad()
def apply_pruning(model, plan: list[torch.Tensor], persistent: bool = False) -> None:
    """Zero the planned filters (kernel and bias) of each expert conv.

    ``persistent`` adds a mask that keeps them zero through fine-tuning;
    call :func:`remove_masks` to fold it into the weights.
    """
    for conv, channels in zip(expert_convs(model), plan):
        conv.weight[channels] = 0
        conv.bias[channels] = 0
        if persistent:
            keep = torch.ones(conv.out_channels)
            keep[channels] = 0
            prune.custom_from_mask(conv, "weight", keep.view(-1, 1, 1, 1).expand_as(conv.weight).clone())
            prune.custom_from_mask(conv, "bias", keep.clone())


def remove_masks(model) -> None:
    for conv in expert_convs(model):
        for name in ("weight", "bias"):
            if hasattr(conv, f"{name}_mask"):
                prune.remove(conv, name)


def fine_pruning_config(attack_config: dict, pruning_rate: float, persistent: bool = False,
                        epochs: int = 5, n_activation: int = 10000, recipe: str = "training") -> dict:
    """A Fine-Pruning run of the model trained by ``attack_config``.

    ``recipe="training"`` fine-tunes with the recipe the model was trained with (as the authors
    did: their model was trained, and fine-tuned, with plain SGD at lr 0.1); ``recipe="authors"``
    with plain SGD at lr 0.1 whatever the training recipe. At ``paper`` the two are the same.
    """
    if recipe == "training":
        fine_tune = {**attack_config["recipe"], "epochs": epochs}
    elif recipe == "authors":
        fine_tune = Recipe(epochs=epochs).as_dict()
    else:
        raise ValueError(f"unknown fine-tuning recipe {recipe!r}; use 'training' or 'authors'")
    return {
        "schema": SCHEMA, "chapter": "pmoe-fine-pruning", "attack": attack_config,
        "pruning_rate": check_rate(pruning_rate, "pruning_rate"), "persistent_mask": persistent,
        "n_activation": n_activation, "fine_tune": fine_tune,
    }


def uses_training_recipe(config: dict) -> bool:
    return config["fine_tune"] == {**config["attack"]["recipe"], "epochs": config["fine_tune"]["epochs"]}


def _measure(model, x_test, y_test, xt, yt, target) -> dict:
    return {"ca": accuracy(predict(model, x_test), y_test),
            "asr": attack_success_rate(predict(model, xt), yt, target)}


def requires(config: dict) -> list[dict]:
    """What a run needs first: a Fine-Pruning run, the attack run whose model it defends."""
    return [config["attack"]] if config.get("chapter") == "pmoe-fine-pruning" else []


def run(config: dict, deps: list) -> tuple[dict, dict]:
    """A run of the Fine-Pruning sweep: the defense on its loaded attack run, or that attack run."""
    return run_fine_pruning(config, deps[0]) if deps else run_attack(config)


def run_fine_pruning(config: dict, base) -> tuple[dict, dict]:
    """Fine-Pruning of the model of ``base``, the cached attack run ``config["attack"]``."""
    attack = config["attack"]
    data = load_dataset(attack["dataset"])
    seed = attack["seed"]
    x, y = train_tensors(attack)  # the attacked run's own images, clean: the defender's data
    x_test, y_test = test_tensors(attack)
    xt, yt = triggered_test_set(x_test, y_test, run_trigger(attack), attack["target"])
    yte, yt = y_test.numpy(), yt.numpy()

    model = load_model(base, data.num_classes)
    metrics, routes = {"before": _measure(model, x_test, yte, xt, yt, attack["target"])}, {}
    routes["before"] = routing_rates(patch_masks(model, xt))
    means = expert_channel_means(model, x[: config["n_activation"]])
    plan = pruning_plan(means, config["pruning_rate"])
    apply_pruning(model, plan, persistent=config["persistent_mask"])
    metrics["after_pruning"] = _measure(model, x_test, yte, xt, yt, attack["target"])
    routes["after_pruning"] = routing_rates(patch_masks(model, xt))
    history = train(model, x, y, Recipe(**config["fine_tune"]), seed=seed + 7)
    remove_masks(model)
    metrics["after_fine_tuning"] = _measure(model, x_test, yte, xt, yt, attack["target"])
    routes["after_fine_tuning"] = routing_rates(patch_masks(model, xt))
    still_zero = [int((conv.weight[ch].abs().sum((1, 2, 3)) == 0).sum()) for conv, ch in
                  zip(expert_convs(model), plan)]
    metrics.update({"trigger_patch_routing": routes, "history": history,
                    "pruned_per_expert": [len(p) for p in plan],
                    "pruned_still_zero_after_fine_tuning": still_zero,
                    "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"pruned.expert_{i + 1}": p for i, p in enumerate(plan)})
    return metrics, tensors


def fine_pruning_results(configs: list[dict], cache: RunCache | None = None, force: bool = False,
                         executor=None):
    """Run (or load) every Fine-Pruning configuration; an attack run that is not cached (chapter 1
    trains them) is trained first, once, however many runs defend it."""
    return (cache or RunCache()).sweep(configs, run, force, desc="Fine-Pruning runs", label=label,
                                       executor=executor, requires=requires)


def label(config: dict) -> str:
    if config.get("chapter") != "pmoe-fine-pruning":
        return run_label(config)
    return f"Fine-Pruning {config['pruning_rate'] * 100:g}% of {run_label(config['attack'])}"


# Fine-tuning epochs and clean images for the activation means, per profile
PROFILES = {"smoke": {"epochs": 1, "n_activation": 500},
            "quick": {"epochs": 5, "n_activation": 10000},
            "paper": {"epochs": 5, "n_activation": 10000}}


def fine_pruning_grid(attack_configs: list[dict], profile_name: str, rates=(0.1, 0.2, 0.3),
                      mask_rates=(0.1,), authors_recipe_rates=(0.0,)) -> list[dict]:
    """Fine-Pruning at each of ``rates`` and fine-tuning alone (rate 0), fine-tuned with the
    training recipe; the persistent-mask variant at ``mask_rates``; and, where the training
    recipe is not the authors', their plain-SGD fine-tuning at ``authors_recipe_rates``."""
    settings = profiles.lookup(PROFILES, profile_name)
    configs = []
    for attack in attack_configs:
        configs += [fine_pruning_config(attack, r, **settings) for r in (*rates, 0.0)]
        configs += [fine_pruning_config(attack, r, persistent=True, **settings) for r in mask_rates]
        configs += [fine_pruning_config(attack, r, recipe="authors", **settings) for r in authors_recipe_rates]
    return list({config_hash(c): c for c in configs}.values())  # at paper the recipes coincide


def chapter_grid(profile_name: str, seeds=None, pruning_rates=(0.1, 0.2, 0.3), mask_rates=(0.1,),
                 authors_recipe_rates=(0.0,), poison_rate: float = 0.02, compare_rates=(0.02,),
                 **overrides) -> dict[str, list[dict]]:
    """Chapter 2's runs, by name, every parameter checked first: ``attacks`` (chapter 1's grid,
    whose models it routes), ``fine_pruning`` (Table 3: Fine-Pruning of the square-poisoned
    CIFAR-10 model at ``poison_rate``, per seed), and the architecture comparison on CIFAR-10
    at ``compare_rates``, ``pmoe`` and ``wrn`` (the dense WRN). ``overrides``: chapter 1's
    ``width``, ``epochs``, ``n_train``."""
    for name, rates in (("pruning_rates", pruning_rates), ("mask_rates", mask_rates),
                        ("authors_recipe_rates", authors_recipe_rates), ("compare_rates", compare_rates)):
        check_list(name, rates, lambda n, v: check_rate(v, n), allow_none=False)
    check_rate(poison_rate, "poison_rate")
    attacks = attack_grid(profile_name, seeds=seeds, **overrides)
    seeds = sorted({c["seed"] for c in attacks})
    targets = [attack_config(profile_name, "cifar10", "square", poison_rate, s, **overrides) for s in seeds]
    compare = dict(datasets=["cifar10"], triggers=["square", "blend"], rates=compare_rates, seeds=seeds, **overrides)
    return {"attacks": attacks,
            "fine_pruning": fine_pruning_grid(targets, profile_name, pruning_rates, mask_rates, authors_recipe_rates),
            "pmoe": attack_grid(profile_name, **compare), "wrn": attack_grid(profile_name, arch="wrn", **compare)}


def chapter_results(groups: dict[str, list[dict]], cache: RunCache | None = None, force: bool = False,
                    executor=None) -> dict[str, list]:
    """The runs of :func:`chapter_grid`, by the same names: chapter 1's models as they are cached
    (trained here only if missing), then this chapter's own, which ``force`` retrains."""
    check_bool("force", force)
    check_choice("executor", executor, [None, *EXECUTORS])
    cache = cache or RunCache()
    ours = ("fine_pruning", "wrn")
    runs = cache.sweep_groups({k: v for k, v in groups.items() if k not in ours}, run, desc="chapter 1's runs",
                              label=label, executor=executor, requires=requires)
    runs |= cache.sweep_groups({k: groups[k] for k in ours}, run, force=force, desc="Fine-Pruning and dense-WRN runs",
                               label=label, executor=executor, requires=requires)
    return {k: runs[k] for k in groups}
