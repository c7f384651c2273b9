import numpy as np
import pytest

from wsss.data.classes import (
    CLASS_NAMES, NEGATIVE, NUM_CLASSES, LabelError, format_label, label_to_multihot, labels_to_matrix,
    multihot_to_label, parse_label,
)


def test_class_table():
    assert NUM_CLASSES == 19 and len(CLASS_NAMES) == 19
    assert CLASS_NAMES[0] == "Nucleoplasm"
    assert CLASS_NAMES[17] == "Vesicles and punctate cytosolic patterns"
    assert CLASS_NAMES[NEGATIVE] == "Negative"


@pytest.mark.parametrize("text,ids", [("0|16", [0, 16]), ("16|0", [0, 16]), ("18", [18]), (" 7|1|2|0 ", [0, 1, 2, 7]),
                                      ("3|3", [3])])
def test_parse(text, ids):
    assert parse_label(text) == ids


def test_round_trip():
    vec = label_to_multihot("0|16")
    assert vec.dtype == np.float32 and vec.shape == (19,)
    assert np.flatnonzero(vec).tolist() == [0, 16]
    assert multihot_to_label(vec) == "0|16"
    assert format_label([16, 0]) == "0|16"
    assert labels_to_matrix(["1", "2|3"]).sum() == 3


@pytest.mark.parametrize("bad,msg", [("19", "out of range"), ("", "empty"), ("0|", "not a class id"),
                                     ("a|1", "not a class id"), ("-1", "not a class id"), ("1.5", "not a class id"),
                                     ("0,1", "not a class id"), ("0|\u00b2", "not a class id")])
def test_bad_labels(bad, msg):
    with pytest.raises(LabelError, match=msg):
        parse_label(bad)


def test_bad_vectors():
    with pytest.raises(LabelError):
        multihot_to_label(np.zeros(5))
    with pytest.raises(LabelError):
        label_to_multihot([19])
    with pytest.raises(LabelError):
        parse_label(3)  # type: ignore[arg-type]
