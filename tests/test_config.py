import pytest

from wsss.config import ConfigError, apply_overrides, get_dotted, load_config, merge, save_config


def test_load_override_save_round_trip(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  name: resnet18\ntrain:\n  lr: 0.0003\n  epochs: 48\n")
    cfg = load_config(path)
    out = apply_overrides(cfg, ["train.epochs=2", "train.lr=1e-3", "model.pretrained=false", "data.size=256",
                                "model.name=test_resnet"])
    assert out["train"] == {"lr": 1e-3, "epochs": 2}
    assert out["model"] == {"name": "test_resnet", "pretrained": False}
    assert get_dotted(out, "data.size") == 256 and get_dotted(out, "data.nope", 7) == 7
    assert cfg["train"]["epochs"] == 48  # the input is not modified
    saved = save_config(out, tmp_path / "run" / "config.yaml")
    assert load_config(saved) == out


def test_overrides_keep_strings_that_only_look_numeric():
    out = apply_overrides({}, ["run.name='0001'", "a.b=nan", "c.d='1e-3'", "e.f=-2.5E+2"])
    assert out["run"]["name"] == "0001" and out["a"]["b"] == "nan" and out["c"]["d"] == "1e-3"
    assert out["e"]["f"] == -250.0


def test_merge_is_deep():
    assert merge({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}}) == {"a": {"b": 1, "c": 3}}


def test_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "none.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml: invalid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(tmp_path / "list.yaml")
    with pytest.raises(ConfigError, match="key.sub=value"):
        apply_overrides({}, ["novalue"])
    with pytest.raises(ConfigError, match="not a section"):
        apply_overrides({"a": 1}, ["a.b=2"])
