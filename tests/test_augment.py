from pathlib import Path

import numpy as np
import pytest

from wsss.data.augment import AugmentSpecError, build_one, build_transform, load_spec

ROOT = Path(__file__).resolve().parents[1]
WRITEUP = ROOT / "configs" / "augment" / "writeup.yaml"

# One entry per augmentation family of the writeup, forced on (p=1) so each one really runs.
EACH = [
    {"name": "GaussNoise", "std_range": [0.05, 0.1], "p": 1},
    {"name": "CoarseDropout", "num_holes_range": [2, 4], "hole_height_range": [0.1, 0.2],
     "hole_width_range": [0.1, 0.2], "fill": 0, "p": 1},
    {"name": "HorizontalFlip", "p": 1},
    {"name": "VerticalFlip", "p": 1},
    {"name": "RandomRotate90", "p": 1},
    {"name": "GridDistortion", "distort_limit": 0.3, "p": 1},
    {"name": "ElasticTransform", "alpha": 30, "sigma": 6, "p": 1},
    {"name": "OpticalDistortion", "distort_limit": 0.3, "p": 1},
    {"name": "ShiftScaleRotate", "shift_limit": 0.1, "scale_limit": 0.1, "rotate_limit": 30, "p": 1},
    {"name": "Affine", "scale": [0.9, 1.1], "rotate": [-30, 30], "shear": [-10, 10], "p": 1},
    {"name": "GaussianBlur", "blur_limit": [3, 5], "p": 1},
    {"name": "MotionBlur", "blur_limit": [3, 5], "p": 1},
    {"name": "MedianBlur", "blur_limit": [3, 5], "p": 1},
    {"name": "RandomGamma", "gamma_limit": [70, 130], "p": 1},
    {"name": "RandomBrightnessContrast", "brightness_limit": 0.3, "contrast_limit": 0.3, "p": 1},
]


def _image(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (64, 64, 4), dtype=np.int64).astype(np.uint8)
    img[..., 3] = 255 - img[..., 0]  # a yellow plane unlike the others, to catch dropped/merged channels
    return img


@pytest.mark.filterwarnings("ignore:ShiftScaleRotate is a special case of Affine")
@pytest.mark.parametrize("spec", EACH, ids=[s["name"] for s in EACH])
def test_each_augmentation_keeps_four_channels_and_dtype(spec):
    transform = build_transform([spec])
    image = _image()
    changed = False
    for _ in range(8):  # some draws may be the identity (RandomRotate90 by 0 degrees): one must not be
        out = transform(image=image)["image"]
        assert out.shape == image.shape and out.dtype == np.uint8
        changed |= not np.array_equal(out, image)
    assert changed, f"{spec['name']} did nothing in 8 draws"


def test_geometric_transforms_move_channels_together():
    image = _image()
    out = build_transform([{"name": "RandomRotate90", "p": 1}])(image=image)["image"]
    # The yellow plane still mirrors the red one after rotation: all four planes moved as one.
    np.testing.assert_array_equal(out[..., 3], 255 - out[..., 0])


def test_writeup_pipeline_file_runs_on_rgby():
    transform = build_transform(WRITEUP)
    for seed in range(20):
        out = transform(image=_image(seed))["image"]
        assert out.shape == (64, 64, 4) and out.dtype == np.uint8
    names = {item["name"] for item in load_spec(WRITEUP)}
    assert {"HorizontalFlip", "RandomRotate90", "Affine", "RandomGamma", "RandomBrightnessContrast"} <= names


def test_cell_pipeline_keeps_a_small_dot_and_the_black_background():
    """configs/augment/cell.yaml: no blur or dropout, so a 2-px dot (a centrosome) survives 40 seeded draws, and
    the background stays dark (the geometric part fills with black; brightness and gamma lift it a little)."""
    spec = ROOT / "configs" / "augment" / "cell.yaml"
    names = {item["name"] for item in load_spec(spec)}
    assert not names & {"GaussianBlur", "MotionBlur", "MedianBlur", "CoarseDropout", "GaussNoise"}
    transform = build_transform(spec)
    transform.set_random_seed(0)
    image = np.zeros((64, 64, 4), np.uint8)
    yy, xx = np.mgrid[0:64, 0:64]
    cell = (yy - 32) ** 2 + (xx - 32) ** 2 < 20 ** 2
    image[cell] = (60, 20, 40, 50)
    image[30:32, 36:38, 1] = 250  # the dot, in the green (protein) plane
    for _ in range(40):
        out = transform(image=image)["image"]
        green = out[..., 1].astype(int)
        assert green.max() >= 90 and green.max() > np.median(green[cell]) + 60  # the dot stands out
        assert out.shape == image.shape and out.dtype == np.uint8
        assert (out[:3, :3] <= 60).all()  # the corner stays dark: brightness shifts 0 by <= 26, gamma lifts that


def test_relative_spec_found_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert build_transform("configs/augment/writeup.yaml") is not None


def test_bad_specs():
    assert build_transform(None) is None and build_transform([]) is None
    with pytest.raises(AugmentSpecError, match="unknown albumentations transform 'Nope'"):
        build_one({"name": "Nope"})
    with pytest.raises(AugmentSpecError, match="needs a 'name'"):
        build_one({"p": 1})
    with pytest.raises(AugmentSpecError, match="OneOf needs a non-empty 'transforms'"):
        build_one({"name": "OneOf"})
    with pytest.raises(AugmentSpecError, match="'colour' are not valid"):
        build_one({"name": "HorizontalFlip", "colour": 1})
    with pytest.raises(AugmentSpecError, match="not found"):
        build_transform("/no/such/file.yaml")
