"""The op contract's validator: valid sets round-trip, every invalid field is named with its head."""

from __future__ import annotations

import re

import numpy as np
import pytest

from minfer.patterns.spec import (
    PER_HEAD_FIELDS,
    HeadPattern,
    Kind,
    PatternError,
    to_attributes,
    validate_attributes,
    validate_shapes,
)

MIXED = (
    HeadPattern.dense(),
    HeadPattern.a_shape(sink=4, local=128),
    HeadPattern.vertical_slash(1000, 6096),
    HeadPattern.block_sparse(top_k=8),
)


def test_attributes_round_trip() -> None:
    attrs = to_attributes(MIXED, 0.125)
    assert attrs["kind"] == [0, 1, 2, 3]
    assert attrs["plugin_namespace"] == "minfer" and attrs["plugin_version"] == "1"
    scale, heads = validate_attributes(attrs, num_heads=4)
    assert scale == 0.125 and heads == MIXED


def test_numpy_arrays_are_accepted() -> None:
    attrs = {
        k: (np.array(v, dtype=np.int64) if isinstance(v, list) else v) for k, v in to_attributes(MIXED, 0.5).items()
    }
    assert validate_attributes(attrs)[1] == MIXED


BAD_FIELDS = [
    (HeadPattern(Kind.A_SHAPE, sink=4, local=0), "local must be in [1, 2147483647], got 0"),
    (HeadPattern(Kind.A_SHAPE, sink=-1, local=8), "sink must be in [0, 2147483647], got -1"),
    (HeadPattern.vertical_slash(10, 10, last_q=0), "last_q must be in [1, 256], got 0"),
    (HeadPattern.vertical_slash(10, 10, last_q=257), "last_q must be in [1, 256], got 257"),
    (HeadPattern.vertical_slash(-1, 10), "vertical_size must be in [0, 2147483647], got -1"),
    (HeadPattern.vertical_slash(10, -5), "slash_size must be in [0, 2147483647], got -5"),
    (HeadPattern.vertical_slash(10, 10, local=0), "local must be in [1, 2147483647], got 0"),
    (HeadPattern(Kind.BLOCK_SPARSE, top_k=0), "top_k must be in [1, 2147483647], got 0"),
    (HeadPattern(Kind.DENSE, top_k=3), "top_k must be 0 for this kind, got 3"),
    (HeadPattern(Kind.BLOCK_SPARSE, top_k=4, local=2), "local must be 0 for this kind, got 2"),
    (HeadPattern(Kind.A_SHAPE, sink=1, local=1, last_q=64), "last_q must be 0 for this kind, got 64"),
    (
        HeadPattern(Kind.VERTICAL_SLASH, vertical_size=1, slash_size=1, last_q=64, local=1, sink=2**31),
        "sink must be in",
    ),
    (HeadPattern(Kind.BLOCK_SPARSE, top_k=2.5), "top_k must be an integer, got 2.5"),
]


@pytest.mark.parametrize(("bad", "message"), BAD_FIELDS)
def test_invalid_field_names_head_kind_and_field(bad: HeadPattern, message: str) -> None:
    heads = (*MIXED, bad)
    attrs = to_attributes(MIXED, 1.0)
    attrs["kind"] = [*attrs["kind"], int(bad.kind)]
    for name in PER_HEAD_FIELDS:
        attrs[name] = [*attrs[name], getattr(bad, name)]
    expected = f"layer 7, head 4 ({bad.kind.label}): {message}"
    with pytest.raises(PatternError, match=re.escape(expected)):
        validate_attributes(attrs, num_heads=len(heads), layer=7)
    with pytest.raises(PatternError, match=re.escape(f"head 4 ({bad.kind.label}): {message}")):
        to_attributes(heads, 1.0)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"block_size": 128}, "block_size must be 64, got 128"),
        ({"scale": 0.0}, "scale must be a finite number > 0, got 0.0"),
        ({"scale": float("nan")}, "scale must be a finite number > 0, got nan"),
        ({"kind": [0, 1, 2, 9]}, "head 3: unknown pattern kind 9"),
        ({"top_k": [0, 0, 0]}, "attribute top_k has 3 entries, expected one per query head (4)"),
        ({"plugin_namespace": "other"}, "plugin_namespace must be 'minfer', got 'other'"),
        ({"window": [1, 2, 3, 4]}, "unknown attribute(s) ['window']"),
        ({"local": None}, None),
    ],
)
def test_invalid_attribute_sets(change: dict, message: str | None) -> None:
    attrs = {**to_attributes(MIXED, 1.0), **change}
    if message is None:  # a removed attribute
        attrs = {k: v for k, v in attrs.items() if k not in change}
        message = "missing attribute(s) ['local']"
    with pytest.raises(PatternError, match=re.escape(message)):
        validate_attributes(attrs, num_heads=4)


def test_num_heads_mismatch_is_named() -> None:
    with pytest.raises(PatternError, match=re.escape("attribute kind has 4 entries, expected one per query head (8)")):
        validate_attributes(to_attributes(MIXED, 1.0), num_heads=8)


def test_kind_parse_by_label_and_number() -> None:
    assert Kind.parse("vertical_slash") is Kind.VERTICAL_SLASH and Kind.parse(3) is Kind.BLOCK_SPARSE
    with pytest.raises(PatternError, match="unknown pattern kind 'slash'"):
        Kind.parse("slash")


@pytest.mark.parametrize(
    ("hq", "hkv", "d", "np_", "message"),
    [
        (32, 6, 128, 32, "query heads (32) must be a positive multiple of KV heads (6)"),
        (32, 0, 128, 32, "query heads (32) must be a positive multiple of KV heads (0)"),
        (32, 8, 96, 32, "head_dim 96 is not supported; supported: (64, 128)"),
        (32, 8, 128, 16, "pattern has 16 heads but Q has 32 query heads"),
    ],
)
def test_shape_rules(hq: int, hkv: int, d: int, np_: int, message: str) -> None:
    with pytest.raises(PatternError, match=re.escape(message)):
        validate_shapes(hq, hkv, d, np_)
    validate_shapes(32, 8, 64, 32)
    validate_shapes(32, 32, 128, 32)
