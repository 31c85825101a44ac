"""Image features: CLIP image embeddings of item pictures (e.g. movie posters).

Uses transformers' `CLIPVisionModelWithProjection` (ViT-B/32 gives 512-d) rather than open_clip,
which needs torchvision. Nothing is downloaded: weights come from a local folder or from the
user's Hugging Face cache.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from feddmmr.errors import MissingExtra
from feddmmr.features.store import check_output_path, save_features

if TYPE_CHECKING:
    from PIL.Image import Image
    from transformers import BaseImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

logger = logging.getLogger(__name__)

DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch32"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


class ImageInputError(ValueError):
    """An images folder or image file that cannot be used; the message names the file."""


class ModelWeightsNotFoundError(FileNotFoundError):
    """CLIP weights are not available locally; the message says where they were looked for."""


def build_image_features(
    images_dir: str | Path,
    output: str | Path,
    *,
    model: str | Path | None = None,
    batch_size: int = 32,
    device: str = "cpu",
) -> Path:
    """Embed every `<item id>.<jpg|jpeg|png|webp>` in `images_dir` and save ids + features.

    `model` is a folder holding a CLIP checkpoint (config, weights, preprocessor_config.json) or
    a Hugging Face name found in the local cache; None means openai/clip-vit-base-patch32.
    Rows are L2-normalised.
    """
    item_images = find_item_images(images_dir)
    ids = _id_array(list(item_images))
    output = check_output_path(output, ids)  # fail before loading the model and embedding
    vision_model, processor = load_clip(model, device=device)
    started = time.perf_counter()
    features = embed_images(
        list(item_images.values()), vision_model, processor, batch_size=batch_size, device=device
    )
    logger.info(
        "Embedded %d images into %d dimensions in %.1f s",
        len(ids),
        features.shape[1],
        time.perf_counter() - started,
    )
    return save_features(output, ids, features)


def find_item_images(images_dir: str | Path) -> dict[int | str, Path]:
    """Image files keyed by item id, the file name without its suffix, sorted by name.

    Files with other suffixes (README, .DS_Store, thumbnails databases) are skipped and logged.
    Ids are integers when every name is one; a folder mixing integer and other names is an error,
    because a stray `poster.jpg` beside `1.jpg` is far more likely a mistake than an item id.
    """
    folder = Path(images_dir)
    if not folder.is_dir():
        raise ImageInputError(f"{folder}: images folder does not exist")
    files = sorted(path for path in folder.iterdir() if path.is_file())
    images = [path for path in files if path.suffix.lower() in IMAGE_SUFFIXES]
    skipped = [path.name for path in files if path.suffix.lower() not in IMAGE_SUFFIXES]
    if skipped:
        logger.info(
            "Skipped %d files in %s that are not %s images: %s",
            len(skipped),
            folder,
            "/".join(IMAGE_SUFFIXES),
            ", ".join(skipped[:5]),
        )
    if not images:
        raise ImageInputError(
            f"{folder}: no images; expected files named by item id, e.g. 123.jpg "
            f"({', '.join(IMAGE_SUFFIXES)})"
        )
    return _key_by_item_id(folder, images)


def _key_by_item_id(folder: Path, images: list[Path]) -> dict[int | str, Path]:
    integer_names = [path for path in images if _is_integer(path.stem)]
    if integer_names and len(integer_names) != len(images):
        others = [path.name for path in images if not _is_integer(path.stem)]
        raise ImageInputError(
            f"{folder}: {len(others)} image names are not integer item ids while the others are, "
            f"e.g. {', '.join(others[:5])}; expected every image named by its item id"
        )
    by_id: dict[int | str, Path] = {}
    for path in images:
        item_id: int | str = int(path.stem) if integer_names else path.stem
        if item_id in by_id:
            raise ImageInputError(
                f"{folder}: {by_id[item_id].name} and {path.name} are both item {item_id!r}; "
                f"expected one image per item"
            )
        by_id[item_id] = path
    return by_id


def _is_integer(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def _id_array(ids: list[int | str]) -> np.ndarray:
    return np.asarray(ids, dtype=np.int64 if isinstance(ids[0], int) else str)


def load_clip(
    model: str | Path | None = None, *, device: str = "cpu"
) -> tuple[CLIPVisionModelWithProjection, BaseImageProcessor]:
    """CLIP vision tower + image processor from a local folder or the local Hugging Face cache."""
    try:
        from transformers import CLIPVisionModelWithProjection
    except ImportError as error:
        raise MissingExtra("image features need transformers: pip install 'feddmmr[image]'") from error
    location = str(model) if model is not None else DEFAULT_CLIP_MODEL
    try:
        # local_files_only: never reach for the network, which is absent on many training hosts.
        config = _vision_config(location)
        vision_model, loading_info = CLIPVisionModelWithProjection.from_pretrained(
            location, config=config, local_files_only=True, output_loading_info=True
        )
        processor = clip_image_processor_class().from_pretrained(location, local_files_only=True)
    except OSError as error:  # transformers reports absent files and bad names as OSError
        raise ModelWeightsNotFoundError(_missing_weights_message(location, error)) from error
    # transformers only warns when weights are missing and fills them with random values; image
    # features from a half-random tower would look fine and mean nothing.
    missing = sorted(loading_info["missing_keys"])
    if missing:
        raise ModelWeightsNotFoundError(
            f"{location}: the checkpoint lacks {len(missing)} vision weights, e.g. "
            f"{', '.join(missing[:3])}; expected a complete CLIP checkpoint"
        )
    return vision_model.to(device).eval(), processor


def _vision_config(location: str) -> CLIPVisionConfig:
    from transformers import CLIPConfig, CLIPVisionConfig, PretrainedConfig

    config_dict, _ = PretrainedConfig.get_config_dict(location, local_files_only=True)
    if not config_dict:  # a folder without config.json yields {}; report it as absent files
        raise OSError(f"no config.json in {location}")
    model_type = config_dict.get("model_type")
    if model_type == "clip":
        # A full image+text checkpoint, as the hub's openai/clip-* are. Its projection size
        # lives in the top-level config; the vision part's own default (512) may differ.
        config = CLIPConfig.from_dict(config_dict)
        config.vision_config.projection_dim = config.projection_dim
        return config.vision_config
    if model_type == "clip_vision_model":
        return CLIPVisionConfig.from_dict(config_dict)
    raise ValueError(
        f"{location}: model type {model_type!r} is not CLIP; expected a CLIP checkpoint "
        f"(model_type 'clip' or 'clip_vision_model' in config.json)"
    )


def clip_image_processor_class() -> type[BaseImageProcessor]:
    # transformers >= 5 splits CLIPImageProcessor into a torchvision and a PIL backend and warns
    # when it falls back to PIL. Asking for the PIL one directly gives the same preprocessing
    # whether or not torchvision happens to be installed, so embeddings don't depend on it.
    try:
        from transformers import CLIPImageProcessorPil
    except ImportError:
        from transformers import CLIPImageProcessor

        return CLIPImageProcessor
    return CLIPImageProcessorPil


def _missing_weights_message(location: str, error: OSError) -> str:
    from huggingface_hub.constants import HF_HUB_CACHE

    how_to_provide = (
        f"Provide a folder holding config.json, model.safetensors and preprocessor_config.json "
        f"and pass it with --model (on a machine with internet: "
        f"`hf download {DEFAULT_CLIP_MODEL} --local-dir DIR`, then copy DIR here)."
    )
    if Path(location).is_dir():
        return f"{location}: not a usable CLIP model folder ({error}). {how_to_provide}"
    return (
        f"CLIP weights {location!r} not found: looked for a local folder at "
        f"{Path(location).resolve()} and for a cached Hugging Face model of that name in "
        f"{HF_HUB_CACHE}; nothing is downloaded. {how_to_provide}"
    )


def embed_images(
    paths: list[Path],
    vision_model: CLIPVisionModelWithProjection,
    processor: BaseImageProcessor,
    *,
    batch_size: int = 32,
    device: str = "cpu",
) -> np.ndarray:
    """L2-normalised float32 image embeddings [len(paths), projection_dim], in `paths` order."""
    import torch

    chunks = []
    with torch.inference_mode():
        # Batches keep memory flat: only `batch_size` decoded images exist at a time.
        for start in range(0, len(paths), batch_size):
            images = [_open_rgb(path) for path in paths[start : start + batch_size]]
            pixels = processor(images=images, return_tensors="pt")["pixel_values"].to(device)
            embeddings = vision_model(pixel_values=pixels).image_embeds
            chunks.append(torch.nn.functional.normalize(embeddings, dim=-1).cpu().numpy())
    return np.concatenate(chunks).astype(np.float32, copy=False)


def _open_rgb(path: Path) -> Image:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.convert("RGB")  # convert() loads the pixels, so the file can close
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise ImageInputError(f"{path}: cannot read this image ({error})") from error
