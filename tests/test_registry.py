import pytest

from ddbench.registry import Plugin, Registry, UnknownNameError


def _plugin(plugin_name: str) -> type[Plugin]:
    class Thing(Plugin):
        """A thing.

        More about it."""

        name = plugin_name

    return Thing


def test_duplicate_name_is_an_error():
    reg: Registry[type[Plugin]] = Registry("thing")
    reg.register(_plugin("alpha"))
    with pytest.raises(ValueError, match="duplicate thing name 'alpha'"):
        reg.register(_plugin("alpha"))


def test_unknown_name_suggests_the_closest():
    reg: Registry[type[Plugin]] = Registry("thing")
    reg.register(_plugin("datadam"))
    reg.register(_plugin("random_real"))
    with pytest.raises(UnknownNameError, match="did you mean 'datadam'"):
        reg.get("datadm")
    with pytest.raises(UnknownNameError) as info:
        reg.get("zzz")
    assert "did you mean" not in str(info.value)


def test_names_must_be_snake_case():
    with pytest.raises(ValueError, match="snake_case"):
        Registry("thing").register(_plugin("Bad-Name"))


def test_description_is_the_docstrings_first_paragraph():
    assert _plugin("alpha").description() == "A thing."


def test_required_plugins_are_registered():
    from ddbench.archs import ARCHS
    from ddbench.artifact import ARTIFACT_KINDS
    from ddbench.data import DATASETS
    from ddbench.evals import EVALS
    from ddbench.methods import METHODS

    # the mission's methods: the coreset baselines, DC, DSA, DM, a conditional GAN, DataDAM,
    # DiM, D2M and D4M (plus the whole-dataset reference and user files)
    assert {
        "random_real",
        "herding",
        "kcenter",
        "dc",
        "dsa",
        "dm",
        "cgan",
        "datadam",
        "dim",
        "d2m",
        "d4m",
        "whole_dataset",
        "from_files",
    } <= set(METHODS.names())
    # cross-architecture training, both NAS spaces, class-incremental continual learning
    assert {"cross_arch", "nas720", "nas_bench_201", "continual"} <= set(EVALS.names())
    assert {
        "digits",
        "mnist",
        "fashion_mnist",
        "svhn",
        "cifar10",
        "cifar100",
        "imagefolder",
        "tiny_imagenet",
        "imagenette",
        "imagewoof",
        "imagesquawk",
    } <= set(DATASETS.names())
    assert {
        "convnet",
        "convnet_bn",
        "mlp",
        "lenet",
        "alexnet",
        "vgg11",
        "resnet18",
        "resnet18_bn",
        "resnet18_ap",
        "resnet50",
        "densenet121",
        "vit_tiny",
    } <= set(ARCHS.names())
    # the `kind` of stored artifacts' meta.json: renaming one would orphan them
    kinds = {"image_set", "real_subset", "generator_set", "diffusion_model"}
    assert kinds <= set(ARTIFACT_KINDS.names())
