import numpy as np
import pytest

from wsss.data.classes import labels_to_matrix
from wsss.data.sampler import BalancedSampler, class_weights, sample_weights


def _targets(spec: list[list[int]]) -> np.ndarray:
    t = np.zeros((len(spec), 19), np.uint8)
    for row, classes in enumerate(spec):
        t[row, classes] = 1
    return t


def test_weights_by_hand():
    # 8 images: class 0 in 6 of them, class 8 in 2, class 11 in 1.
    t = _targets([[0], [0], [0], [0], [0, 8], [0, 11], [8], [18]])
    w = class_weights(t)
    assert w[0] == pytest.approx(8 / 6) and w[8] == pytest.approx(8 / 2) and w[11] == pytest.approx(8 / 1)
    assert w[5] == 0
    s = sample_weights(t, clip_class=8)
    # image 5 holds class 11 (weight 8) but is clipped at class 8's weight 4.
    np.testing.assert_allclose(s, [8 / 6] * 4 + [4, 4, 4, 4])
    np.testing.assert_allclose(sample_weights(t, clip_class=None)[5], 8.0)


def test_rare_classes_not_oversampled_beyond_clip(shared_data):
    import pandas as pd

    t = labels_to_matrix(pd.read_csv(shared_data / "hpa_train_labels.csv")["Label"])
    s = sample_weights(t)
    cap = class_weights(t)[8]
    assert s.max() == pytest.approx(cap)
    assert (s[t[:, 11] > 0] <= cap + 1e-9).all() and (s[t[:, 15] > 0] <= cap + 1e-9).all()


def test_sampled_frequencies_move_toward_balance(shared_data):
    import pandas as pd

    t = labels_to_matrix(pd.read_csv(shared_data / "hpa_train_labels.csv")["Label"])
    idx = np.array(list(BalancedSampler(t, seed=1)))
    before, after = t.mean(0), t[idx].mean(0)
    # Over-represented classes drop, rare ones rise, and the spread of class frequencies shrinks.
    assert after[0] < before[0] - 0.04 and after[16] < before[16] - 0.03
    for rare in (1, 6, 8, 10, 11, 15, 17):
        assert after[rare] > before[rare]
    assert np.std(np.log(after[:18])) < 0.8 * np.std(np.log(before[:18]))


def test_deterministic_and_epoch_dependent():
    t = _targets([[k % 19] for k in range(100)])
    a, b = BalancedSampler(t, seed=3), BalancedSampler(t, seed=3)
    assert list(a) == list(b)
    a.set_epoch(1)
    assert list(a) != list(b)
    state = a.state_dict()
    c = BalancedSampler(t, seed=0)
    c.load_state_dict(state)
    assert list(c) == list(a)


def test_ranks_share_one_draw_without_overlap():
    t = _targets([[k % 19] for k in range(101)])
    full = list(BalancedSampler(t, seed=5, num_replicas=1, rank=0))
    parts = [list(BalancedSampler(t, seed=5, num_replicas=3, rank=r)) for r in range(3)]
    assert [len(p) for p in parts] == [34, 34, 34]
    assert len(BalancedSampler(t, num_replicas=3, rank=2)) == 34
    interleaved = [parts[k % 3][k // 3] for k in range(101)]
    assert interleaved == full
    with pytest.raises(ValueError, match="rank 3"):
        BalancedSampler(t, num_replicas=3, rank=3)


def test_bad_targets():
    with pytest.raises(ValueError, match="N x 19"):
        sample_weights(np.zeros((3, 5)))


def test_draw_smaller_than_world_size_still_fills_every_rank():
    t = _targets([[0], [1], [2]])
    for rank in range(4):
        sampler = BalancedSampler(t, num_samples=1, num_replicas=4, rank=rank)
        assert len(list(sampler)) == len(sampler) == 1
