"""Configuration: presets, flat typed overrides and clear errors for wrong keys or values."""

from __future__ import annotations

import pytest

from unlearn_env.config import PRESETS, get_config, parse_overrides


def test_presets_exist_and_differ_in_size() -> None:
    assert set(PRESETS) == {"test", "cpu", "paper"}
    widths = [get_config(p).model.block_out_channels[-1] for p in ("test", "cpu", "paper")]
    assert widths == sorted(widths) and len(set(widths)) == 3


def test_string_overrides_are_parsed_by_field_type() -> None:
    overrides = parse_overrides(
        ["horizon=12", "lr=3e-4", "block_out_channels=8,16", "max_grad_norm=none", "hflip_forget=false", "mode=weights"]
    )
    cfg = get_config("test", **overrides)
    assert cfg.unlearn.horizon == 12 and cfg.unlearn.lr == 3e-4
    assert cfg.model.block_out_channels == (8, 16)
    assert cfg.unlearn.max_grad_norm is None and cfg.pretrain.hflip_forget is False
    assert cfg.unlearn.mode == "weights"


def test_unknown_key_lists_valid_keys() -> None:
    with pytest.raises(KeyError, match="unknown config key.*'horizn'.*valid keys are:.*horizon"):
        get_config("test", horizn=3)
    with pytest.raises(KeyError, match="unknown preset"):
        get_config("huge")


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("horizon", "ten", "horizon expects int"),
        ("mode", "magic", "mode must be one of"),
        ("lambda_min", "0.0", "lambda_min"),
        ("lambda_init", "0.95", "lambda_init"),
        ("hflip_forget", "maybe", "boolean"),
        ("adam_betas", "0.9", "adam_betas expects 2 comma-separated values"),
        ("adam_betas", "0.9,0.99,0.999", "adam_betas expects 2"),
    ],
)
def test_bad_values_name_the_field(key: str, value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        get_config("test", **{key: value})


def test_malformed_override_pair() -> None:
    with pytest.raises(ValueError, match="key=value"):
        parse_overrides(["horizon"])


def test_base_model_key_ignores_unlearning_and_runtime_settings() -> None:
    base = get_config("test")
    assert base.with_overrides(horizon=99, device="cpu", cache_dir="/x").base_model_key() == base.base_model_key()
    assert base.with_overrides(train_steps=41).base_model_key() != base.base_model_key()
