"""CLIP image features, with a tiny randomly initialised CLIP instead of the real weights."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest

# Model loading must never reach for the network; it would retry for minutes offline.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

pytest.importorskip("transformers", reason="image features need pip install 'feddmmr[image]'")
pytest.importorskip("PIL", reason="image features need pip install 'feddmmr[image]'")

from PIL import Image  # noqa: E402

from feddmmr.features.image import (  # noqa: E402
    ImageInputError,
    ModelWeightsNotFoundError,
    build_image_features,
    embed_images,
    find_item_images,
    load_clip,
)
from feddmmr.features.store import load_features  # noqa: E402

PROJECTION_DIM = 16


def save_tiny_clip(folder: Path) -> Path:
    """A randomly initialised CLIP vision tower (32 px images, 16-d output) + its processor."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from feddmmr.features.image import clip_image_processor_class

    torch.manual_seed(0)
    config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
        projection_dim=PROJECTION_DIM,
    )
    CLIPVisionModelWithProjection(config).save_pretrained(folder)
    processor = clip_image_processor_class()(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


def write_images(folder: Path, names: list[str]) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir(exist_ok=True)
    for name in names:
        pixels = rng.integers(0, 256, size=(48, 40, 3), dtype=np.uint8)  # not square: exercise the crop
        Image.fromarray(pixels).save(folder / name)
    return folder


def test_embeddings_have_projection_dim_unit_norm_and_item_ids(tmp_path: Path, tiny_clip: Path) -> None:
    images = write_images(tmp_path / "posters", ["1.jpg", "20.png", "3.jpeg", "4.webp"])

    output = build_image_features(images, tmp_path / "image.npz", model=tiny_clip, batch_size=3)

    ids, features = load_features(output)
    assert sorted(ids.tolist()) == [1, 3, 4, 20]
    assert features.shape == (4, PROJECTION_DIM) and features.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, rtol=1e-5)


def test_embeddings_are_deterministic_and_independent_of_batching(tmp_path: Path, tiny_clip: Path) -> None:
    images = write_images(tmp_path / "posters", ["1.png", "2.png", "3.png"])

    _, first = load_features(build_image_features(images, tmp_path / "a.npz", model=tiny_clip, batch_size=1))
    _, second = load_features(build_image_features(images, tmp_path / "b.npz", model=tiny_clip, batch_size=8))

    np.testing.assert_allclose(first, second, atol=1e-5)


def test_missing_weights_folder_is_a_clear_error(tmp_path: Path) -> None:
    images = write_images(tmp_path / "posters", ["1.png"])
    with pytest.raises(ModelWeightsNotFoundError, match=r"not found: looked for a local folder.*--model"):
        build_image_features(images, tmp_path / "f.npz", model=tmp_path / "no-such-clip")


def test_uncached_hub_name_is_a_clear_error(tmp_path: Path) -> None:
    images = write_images(tmp_path / "posters", ["1.png"])
    with pytest.raises(ModelWeightsNotFoundError, match=r"cached Hugging Face model of that name in"):
        build_image_features(images, tmp_path / "f.npz", model="feddmmr-tests/no-such-clip")


def test_folder_without_weights_is_a_clear_error(tmp_path: Path) -> None:
    images = write_images(tmp_path / "posters", ["1.png"])
    (tmp_path / "empty-model").mkdir()
    with pytest.raises(ModelWeightsNotFoundError, match=r"empty-model: not a usable CLIP model folder"):
        build_image_features(images, tmp_path / "f.npz", model=tmp_path / "empty-model")


def test_full_clip_checkpoint_gives_clip_image_features(tmp_path: Path) -> None:
    """The hub's openai/clip-* hold image AND text towers; the vision part must load unchanged."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    layers = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    config = CLIPConfig(
        text_config=dict(layers, vocab_size=100, max_position_embeddings=16, bos_token_id=0, eos_token_id=1),
        vision_config=dict(layers, image_size=32, patch_size=8),
        projection_dim=PROJECTION_DIM,  # differs from the vision config's default of 512
    )
    full = CLIPModel(config).eval()
    folder = save_tiny_clip(tmp_path / "full-clip")  # for its preprocessor_config.json
    full.save_pretrained(folder)
    images = write_images(tmp_path / "posters", ["1.png", "2.png"])
    paths = sorted(images.iterdir())

    vision_model, processor = load_clip(folder)
    features = embed_images(paths, vision_model, processor)

    pixels = processor(images=[Image.open(path).convert("RGB") for path in paths], return_tensors="pt")
    with torch.no_grad():
        expected = full.visual_projection(full.vision_model(**pixels).pooler_output)
    expected = torch.nn.functional.normalize(expected, dim=-1).numpy()
    np.testing.assert_allclose(features, expected, atol=1e-5)


def test_checkpoint_missing_weights_is_an_error(tmp_path: Path, tiny_clip: Path) -> None:
    from safetensors.numpy import load_file, save_file

    broken = tmp_path / "broken"
    broken.mkdir()
    for file in tiny_clip.iterdir():
        (broken / file.name).write_bytes(file.read_bytes())
    weights = load_file(broken / "model.safetensors")
    kept = {name: value for name, value in weights.items() if "layers.1." not in name}
    save_file(kept, broken / "model.safetensors", metadata={"format": "pt"})

    with pytest.raises(ModelWeightsNotFoundError, match=r"broken: the checkpoint lacks \d+ vision weights"):
        load_clip(broken)


def test_non_clip_checkpoint_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ValueError, match="model type 'bert' is not CLIP"):
        load_clip(tmp_path)


def test_unreadable_image_names_the_file(tmp_path: Path, tiny_clip: Path) -> None:
    images = write_images(tmp_path / "posters", ["1.png"])
    (images / "2.jpg").write_bytes(b"this is not a jpeg")
    with pytest.raises(ImageInputError, match=r"2\.jpg: cannot read this image"):
        build_image_features(images, tmp_path / "f.npz", model=tiny_clip)


def test_other_files_are_skipped_and_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    images = write_images(tmp_path / "posters", ["5.png"])
    (images / "README.txt").write_text("posters from somewhere")
    with caplog.at_level(logging.INFO, logger="feddmmr.features.image"):
        assert list(find_item_images(images)) == [5]
    assert "Skipped 1 files" in caplog.text and "README.txt" in caplog.text


def test_mixed_integer_and_other_names_are_an_error(tmp_path: Path) -> None:
    images = write_images(tmp_path / "posters", ["1.png", "cover.jpg"])
    with pytest.raises(ImageInputError, match=r"1 image names are not integer item ids.*cover\.jpg"):
        find_item_images(images)


def test_string_ids_when_no_name_is_an_integer(tmp_path: Path) -> None:
    images = write_images(tmp_path / "posters", ["b12.png", "a7.jpg"])
    assert list(find_item_images(images)) == ["a7", "b12"]


def test_two_images_for_one_item_are_an_error(tmp_path: Path) -> None:
    images = write_images(tmp_path / "posters", ["7.png", "007.jpg"])
    with pytest.raises(ImageInputError, match=r"both item 7"):
        find_item_images(images)


def test_empty_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ImageInputError, match="no images"):
        find_item_images(tmp_path)
