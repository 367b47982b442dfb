"""Loss-network weights: every path of the resolution rule, and its errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from training import weights
from training.vgg import VGGFeatures, layer_names, load_vgg
from training.weights import WeightsHashMismatch, WeightsNotFound, resolve_weights


@pytest.fixture()
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub cache of our own."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints"


def fake_torchvision_file(path: Path, arch: str = "vgg16") -> str:
    """A torchvision-layout VGG state dict (random values) and its SHA-256."""
    net = VGGFeatures(arch, layer_names(arch)[-1])
    state = {}
    for index, module in enumerate(net.layers):
        if isinstance(module, torch.nn.Conv2d):
            state[f"features.{index}.weight"] = module.weight.detach().clone()
            state[f"features.{index}.bias"] = module.bias.detach().clone()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return weights.sha256_file(path)


def test_random_weights_are_deterministic_and_recorded() -> None:
    net_a, info = load_vgg("vgg16", ["relu2_2"], weights="random:7")
    net_b, _ = load_vgg("vgg16", ["relu2_2"], weights="random:7")
    net_c, _ = load_vgg("vgg16", ["relu2_2"], weights="random:8")
    first = next(net_a.parameters())
    assert torch.equal(first, next(net_b.parameters())) and not torch.equal(first, next(net_c.parameters()))
    assert info.tag == "random:7" and info.source == "random"


def test_network_is_truncated_at_the_deepest_layer_and_frozen() -> None:
    net, _ = load_vgg("vgg19", ["relu1_1", "relu3_1"], weights="random:0", pooling="avg")
    assert net.names[-1] == "relu3_1"
    assert not any(p.requires_grad for p in net.parameters())
    assert any(isinstance(m, torch.nn.AvgPool2d) for m in net.layers)
    out = net(torch.rand(1, 3, 32, 32), ["relu1_1", "relu3_1"])
    assert out["relu1_1"].shape == (1, 64, 32, 32) and out["relu3_1"].shape == (1, 256, 8, 8)


def test_unknown_layer_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="has no layer 'relu9_9'.*conv1_1"):
        load_vgg("vgg16", ["relu9_9"], weights="random:0")


def test_not_found_error_names_every_way_to_provide_weights(hub: Path) -> None:
    with pytest.raises(WeightsNotFound) as caught:
        resolve_weights("vgg16", "torchvision")
    message = str(caught.value)
    for way in (
        "--loss-weights /path/to/vgg16-397923af.pth",
        str(hub / "vgg16-397923af.pth"),
        "--allow-download",
        "random:SEED",
    ):
        assert way in message


def test_missing_explicit_file_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFound, match="does not exist"):
        resolve_weights("vgg19", str(tmp_path / "nope.pth"))


def test_wrong_hash_is_refused_for_a_file_and_the_hub_cache(hub: Path, tmp_path: Path) -> None:
    explicit = tmp_path / "vgg16.pth"
    actual = fake_torchvision_file(explicit)
    with pytest.raises(WeightsHashMismatch, match=actual):
        resolve_weights("vgg16", str(explicit))
    fake_torchvision_file(hub / "vgg16-397923af.pth")
    with pytest.raises(WeightsHashMismatch, match="397923af8e79"):
        resolve_weights("vgg16", "torchvision")


def test_a_file_with_the_published_hash_is_loaded(hub: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # We cannot ship torchvision's 528 MB file; we make a file and publish its hash instead.
    path = hub / "vgg16-397923af.pth"
    digest = fake_torchvision_file(path)
    monkeypatch.setitem(weights.IMAGENET_WEIGHTS, "vgg16", (weights.IMAGENET_WEIGHTS["vgg16"][0], digest))
    net, info = load_vgg("vgg16", ["relu1_2"], weights="torchvision")
    assert info.source == "hub-cache" and info.sha256 == digest and info.tag == f"imagenet:{digest[:16]}"
    state = torch.load(path, weights_only=True)
    assert torch.equal(net.layers[0].weight, state["features.0.weight"])
    net2, info2 = load_vgg("vgg16", ["relu1_2"], weights=str(path))
    assert info2.source == "file" and torch.equal(net2.layers[0].weight, net.layers[0].weight)


def test_download_is_only_tried_when_allowed(hub: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    source = tmp_path / "published.pth"
    digest = fake_torchvision_file(source)
    monkeypatch.setitem(weights.IMAGENET_WEIGHTS, "vgg16", (source.as_uri(), digest))
    with pytest.raises(WeightsNotFound):
        resolve_weights("vgg16", "imagenet")  # the older name of the torchvision source
    state, info = resolve_weights(
        "vgg16", "torchvision", allow_download=True
    )  # a file:// URL stands in for the network
    assert info.source == "download" and state is not None
    assert (hub / "published.pth").exists(), "a checked download lands in the hub cache"


# The keras-vgg16 source: `make weights` (which `make test` runs first) fetched and converted it.


def test_keras_weights_carry_the_caffe_convention_and_read_rgb() -> None:
    from training.keras_vgg import cache_path

    assert cache_path().is_file(), "run `make weights` (python -m training.weights fetch) first"
    net, info = load_vgg("vgg16", ["relu1_1", "relu2_2"])  # the default source
    assert info.source == "keras" and info.tag.startswith("keras-vgg16:3be917fb")
    assert info.convention == weights.CAFFE_CONVENTION
    # Our network reads RGB in [0, 1]; Keras' reads BGR in 0-255 less the Caffe mean. Same numbers:
    state, _ = resolve_weights("vgg16")
    rgb = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(1))
    bgr = rgb.flip(1) * 255 - torch.tensor(weights.CAFFE_CONVENTION.mean).view(1, 3, 1, 1)
    assert state is not None
    keras = torch.relu(torch.nn.functional.conv2d(bgr, state["features.0.weight"], state["features.0.bias"], padding=1))
    ours = net(rgb, ["relu1_1"])["relu1_1"]
    torch.testing.assert_close(ours, keras, rtol=1e-4, atol=1e-3)


def test_keras_weights_are_a_vgg16_only_and_never_stand_in_for_another_source(hub: Path) -> None:
    with pytest.raises(ValueError, match="VGG-16; VGG19 needs --loss-weights torchvision"):
        resolve_weights("vgg19", "keras-vgg16")
    with pytest.raises(WeightsNotFound, match="make weights"):  # an empty cache: an error, not a download
        resolve_weights("vgg16", "keras-vgg16")


def test_the_convention_gives_rgb_unit_mean_and_std() -> None:
    mean, std = weights.CAFFE_CONVENTION.rgb_unit()
    assert mean == pytest.approx((123.68 / 255, 116.779 / 255, 103.939 / 255)) and std == pytest.approx((1 / 255,) * 3)
    assert weights.TORCHVISION_CONVENTION.rgb_unit() == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def test_each_source_says_which_networks_it_provides(
    hub: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert weights.networks_for("random:3") == ("vgg16", "vgg19")
    assert weights.networks_for("keras-vgg16") == ("vgg16",)
    assert weights.networks_for("torchvision") == ()  # an empty hub cache
    fake_torchvision_file(hub / "vgg19-dcbb9e9d.pth", "vgg19")  # a file by torchvision's name (loading checks it)
    assert weights.networks_for("torchvision") == ("vgg19",) and weights.networks_for("imagenet") == ("vgg19",)
    # An explicit file provides the network whose published SHA-256 it has, and nothing else.
    own = tmp_path / "mine.pth"
    digest = fake_torchvision_file(own, "vgg19")
    assert weights.networks_for(str(own)) == ()
    monkeypatch.setitem(weights.IMAGENET_WEIGHTS, "vgg19", ("https://example.invalid/vgg19.pth", digest))
    assert weights.networks_for(str(own)) == ("vgg19",)
    assert weights.networks_for(str(tmp_path / "missing.pth")) == ()
