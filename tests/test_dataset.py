import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from wsss.data.augment import build_transform
from wsss.data.dataset import DEFAULT_MEAN, DEFAULT_STD, HPADataset, channel_stats, normalize
from wsss.data.io import write_rgby_png


@pytest.fixture()
def cache(tmp_path):
    rng = np.random.default_rng(0)
    for k in range(4):
        write_rgby_png(tmp_path / f"id{k}.png", rng.integers(0, 256, (32, 32, 4), dtype=np.int64).astype(np.uint8))
    return tmp_path


def test_normalize_matches_formula():
    img = np.zeros((2, 3, 4), np.uint8)
    img[..., 1] = 255
    out = normalize(img, mean=(0.5, 0.5, 0.5, 0.5), std=(0.5, 0.25, 1.0, 2.0))
    assert out.shape == (4, 2, 3) and out.dtype == torch.float32
    assert torch.allclose(out[:, 0, 0], torch.tensor([-1.0, 2.0, -0.5, -0.25]))
    with pytest.raises(ValueError, match="H x W x 4"):
        normalize(np.zeros((2, 2, 3), np.uint8))


def test_dataset_items(cache):
    targets = np.zeros((4, 19), np.float32)
    targets[0, [0, 16]] = 1
    ds = HPADataset(cache, [f"id{k}" for k in range(4)], targets, transform=build_transform(
        [{"name": "HorizontalFlip", "p": 1}]))
    image, target = ds[0]
    assert image.shape == (4, 32, 32) and image.dtype == torch.float32
    assert target.tolist() == targets[0].tolist()
    raw = ds.load(0)
    expected = normalize(raw[:, ::-1], DEFAULT_MEAN, DEFAULT_STD)
    assert torch.allclose(image, expected)
    batch = next(iter(DataLoader(ds, batch_size=4, num_workers=0)))
    assert batch[0].shape == (4, 4, 32, 32) and batch[1].shape == (4, 19)


def test_dataset_without_targets_and_bad_targets(cache):
    ds = HPADataset(cache, ["id1"])
    assert ds[0][1].sum() == 0
    with pytest.raises(ValueError, match="targets must be 1 x 19"):
        HPADataset(cache, ["id1"], np.zeros((2, 19)))


def test_channel_stats(cache):
    mean, std = channel_stats(cache, ["id0", "id1"])
    assert mean.shape == (4,) and np.all((mean > 0.4) & (mean < 0.6)) and np.all((std > 0.25) & (std < 0.33))
