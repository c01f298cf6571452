"""Pattern configs: our format (schema + contract errors), MInference's published configs, the default."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from minfer.patterns.config import (
    DEFAULT_HEAD,
    PatternConfig,
    config_from_json,
    default_config,
    load_config,
    minference_config_from_json,
)
from minfer.patterns.reference import dense_causal_attention, sparse_prefill_attention
from minfer.patterns.spec import HeadPattern, Kind, PatternError

LAYER = (
    HeadPattern.dense(),
    HeadPattern.a_shape(sink=4, local=256),
    HeadPattern.vertical_slash(1000, 6096),
    HeadPattern.block_sparse(top_k=16),
)


def test_every_published_minference_config_loads(minference_configs: Path) -> None:
    files = sorted(minference_configs.glob("*.json"))
    assert len(files) >= 14
    for path in files:
        raw = json.loads(path.read_text())
        config = load_config(path)
        assert config.num_layers == len(raw)
        for li, layer in enumerate(raw):
            assert len(config.layers[li]) == len(layer)
            for hi, (kind, vertical, slash, score) in ((int(h), e) for h, e in layer.items()):
                head = config.layers[li][hi]
                assert config.stats[li][hi]["score"] == score
                if kind == "vertical_and_slash":
                    assert head == HeadPattern.vertical_slash(vertical, slash, last_q=64, sink=30, local=100)
                else:
                    assert kind == "stream_llm" and head == HeadPattern.a_shape(sink=vertical, local=slash)


def test_known_entries(minference_configs: Path) -> None:
    llama = load_config(minference_configs / "Llama_3_8B_Instruct_262k_kv_out_v32_fit_o_best_pattern.json")
    assert llama.num_layers == 32 and len(llama.layers[16]) == 32
    assert llama.layers[16][0] == HeadPattern.vertical_slash(3500, 100)
    assert llama.layers[16][1] == HeadPattern.vertical_slash(1000, 6096)
    phi = load_config(minference_configs / "Phi_3_mini_128k_instruct_kv_out_v32_fit_o_best_pattern.json")
    assert phi.kind_counts() == {"dense": 0, "a_shape": 43, "vertical_slash": 981, "block_sparse": 0}


def test_minference_block_sparse_keeps_100_blocks() -> None:
    config = minference_config_from_json([{"0": ["block_sparse", 1000, 6096, 0.5], "1": ["stream_llm", 64, 512, 1]}])
    assert config.layers[0] == (HeadPattern.block_sparse(100), HeadPattern.a_shape(64, 512))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"0": 1}, "an MInference config is a non-empty JSON list of layers"),
        ([], "an MInference config is a non-empty JSON list of layers"),
        ([{"0": ["vertical_and_slash", 1, 2, 3]}, []], "layer 1 must be a non-empty object of head -> entry"),
        (
            [{"0": ["vertical_and_slash", 1, 2, 3], "2": ["vertical_and_slash", 1, 2, 3]}],
            "layer 0 heads must be '0'..'1'",
        ),
        (
            [{"0": ["vertical_and_slash", 1, 2]}],
            "layer 0, head 0: entry must be [kind, vertical_size, slash_size, score]",
        ),
        ([{"0": ["vertical_and_slash", "1", 2, 0]}], "layer 0, head 0: entry must be"),
        ([{"0": ["diagonal", 1, 2, 0]}], "layer 0, head 0: unknown MInference kind 'diagonal'"),
        ([{"0": ["vertical_and_slash", -1, 2, 0]}], "layer 0, head 0 (vertical_slash): vertical_size must be in"),
    ],
)
def test_malformed_minference_configs_are_named(data: object, message: str) -> None:
    with pytest.raises(PatternError, match=re.escape(message)):
        minference_config_from_json(data)


def test_our_format_round_trips(tmp_path: Path) -> None:
    config = PatternConfig(
        (LAYER, LAYER[::-1]),
        {"name": "tiny", "num_heads": 4},
        (({"recall": 0.99, "density": 0.1},) * 4, ({},) * 4),
    )
    path = config.save(tmp_path / "p.json")
    loaded = load_config(path)
    assert loaded.layers == config.layers and loaded.model["name"] == "tiny"
    assert loaded.stats[0][2] == {"recall": 0.99, "density": 0.1}
    assert json.loads(path.read_text())["layers"][1]["heads"][0] == {"kind": "block_sparse", "top_k": 16}


def test_save_never_overwrites_unless_asked(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text("precious")
    config = default_config(1, 2)
    with pytest.raises(FileExistsError, match="exists"):
        config.save(path)
    assert path.read_text() == "precious"
    config.save(path, overwrite=True)
    assert load_config(path).layers == config.layers


def test_optional_vertical_slash_fields_take_minference_defaults() -> None:
    data = {
        "format": "minfer-patterns",
        "version": 1,
        "layers": [{"heads": [{"kind": "vertical_slash", "vertical_size": 10, "slash_size": 20}]}],
    }
    assert config_from_json(data).layers[0][0] == HeadPattern.vertical_slash(10, 20, last_q=64, sink=30, local=100)


def _ours(heads: list[dict]) -> dict:
    return {"format": "minfer-patterns", "version": 1, "layers": [{"heads": heads}]}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({**_ours([{"kind": "dense"}]), "format": "other"}, "at format: 'minfer-patterns' was expected"),
        (_ours([{"kind": "dense"}, {"kind": "stripes"}]), "at layers/0/heads/1/kind: 'stripes' is not one of"),
        (_ours([{"kind": "a_shape", "sink": 4}]), "layer 0, head 0 (a_shape): missing ['local']"),
        (
            _ours([{"kind": "dense", "window": 3}]),
            "at layers/0/heads/0: Additional properties are not allowed ('window'",
        ),
        (_ours([{"kind": "block_sparse", "top_k": -2}]), "at layers/0/heads/0/top_k: -2 is less than the minimum of 0"),
        (
            _ours([{"kind": "block_sparse", "top_k": 0}]),
            "layer 0, head 0 (block_sparse): top_k must be in [1, 2147483647], got 0",
        ),
        (
            _ours([{"kind": "vertical_slash", "vertical_size": 1, "slash_size": 1, "last_q": 300}]),
            "last_q must be in [1, 256], got 300",
        ),
        (_ours([{"kind": "dense", "top_k": 3}]), "layer 0, head 0 (dense): top_k must be 0 for this kind, got 3"),
        (_ours([]), "at layers/0/heads: [] should be non-empty"),
        ({**_ours([{"kind": "dense"}]), "block_size": 128}, "at block_size: 64 was expected"),
    ],
)
def test_invalid_configs_are_named(data: dict, message: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(PatternError, match=re.escape(message)) as err:
        load_config(path)
    assert str(path) in str(err.value)


def test_unreadable_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(PatternError, match="does not exist"):
        load_config(tmp_path / "missing.json")
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(PatternError, match="is not valid JSON"):
        load_config(tmp_path / "x.json")


def test_default_is_minference_vertical_slash_and_clips_to_short_inputs() -> None:
    config = default_config(num_layers=3, num_heads=4)
    assert DEFAULT_HEAD == HeadPattern(
        Kind.VERTICAL_SLASH, sink=30, local=100, vertical_size=1000, slash_size=6096, last_q=64
    )
    assert all(h == DEFAULT_HEAD for layer in config.layers for h in layer)
    # At S below the budgets the default selects every key: dense attention.
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 4, 300, 64) for _ in range(3))
    torch.testing.assert_close(
        sparse_prefill_attention(q, k, v, config.layers[0], 0.125),
        dense_causal_attention(q, k, v, 0.125),
        rtol=1e-5,
        atol=1e-6,
    )
