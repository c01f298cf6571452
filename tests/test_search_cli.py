"""The full path on a small randomly initialised transformers model: capture, search, config, export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from search_helpers import one_thread  # noqa: F401 (autouse fixture)
from typer.testing import CliRunner

from minfer.patterns.capture import capture_layers, load_model, read_calibration
from minfer.patterns.config import load_config
from minfer.patterns.search_cli import app
from minfer.patterns.spec import PatternError, to_attributes, validate_attributes

transformers = pytest.importorskip("transformers")

LAYERS, HEADS, KV_HEADS, HEAD_DIM, VOCAB = 2, 4, 2, 64, 512


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tiny-llama")
    transformers.LlamaConfig(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        head_dim=HEAD_DIM,
        vocab_size=VOCAB,
        max_position_embeddings=4096,
    ).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def token_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("calibration") / "ids.json"
    path.write_text(json.dumps(torch.randint(0, VOCAB, (700,), generator=torch.Generator().manual_seed(0)).tolist()))
    return path


def test_capture_gives_rotated_qk_and_leaves_the_output_unchanged(model_dir):
    model, tokenizer = load_model(model_dir / "config.json")
    assert tokenizer is None
    ids = torch.randint(0, VOCAB, (150,), generator=torch.Generator().manual_seed(1))
    seen = {}
    capture_layers(model, ids, lambda layer, q, k, scale: seen.setdefault(layer, (q.clone(), k.clone(), scale)))
    assert sorted(seen) == list(range(LAYERS))
    # layer 0 by hand: embeddings -> input norm -> projections -> rotary embedding
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    with torch.no_grad():
        hidden = model.embed_tokens(ids[None])
        cos, sin = model.rotary_emb(hidden, torch.arange(150)[None])
        attn = model.layers[0].self_attn
        normed = model.layers[0].input_layernorm(hidden)
        q = attn.q_proj(normed).view(1, 150, HEADS, HEAD_DIM).transpose(1, 2)
        k = attn.k_proj(normed).view(1, 150, KV_HEADS, HEAD_DIM).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
    q0, k0, scale = seen[0]
    assert q0.shape == (HEADS, 150, HEAD_DIM) and k0.shape == (KV_HEADS, 150, HEAD_DIM)
    torch.testing.assert_close(q0, q[0])
    torch.testing.assert_close(k0, k[0])
    assert scale == pytest.approx(HEAD_DIM**-0.5)
    plain = transformers.AutoModel.from_config(model.config, attn_implementation="sdpa")
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        expected = plain(input_ids=ids[None], use_cache=False).last_hidden_state
        got = model(input_ids=ids[None], use_cache=False).last_hidden_state
    torch.testing.assert_close(got, expected)


def test_cli_writes_a_config_that_loads_and_exports(model_dir, token_file, tmp_path):
    out = tmp_path / "patterns.json"
    args = ["--model", str(model_dir), "--calibration", str(token_file), "--length", "650", "-o", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "searched" in result.output and "default" in result.output and "speed-up" in result.output
    config = load_config(out)
    assert config.num_layers == LAYERS and all(len(layer) == HEADS for layer in config.layers)
    meta = config.model
    assert (meta["num_heads"], meta["num_kv_heads"], meta["head_dim"], meta["searched_length"]) == (
        HEADS,
        KV_HEADS,
        HEAD_DIM,
        650,
    )
    assert sum(meta["search"]["kinds"].values()) == LAYERS * HEADS
    for i, layer in enumerate(config.layers):
        _, heads = validate_attributes(to_attributes(layer, HEAD_DIM**-0.5), HEADS, i)
        assert heads == layer
        for stats in config.stats[i]:
            assert stats["recall"] >= 0.95 and 0 < stats["density"] <= 1
    # the same config drives the ONNX export of the same architecture
    hf = pytest.importorskip("minfer.export.hf")
    onnx = pytest.importorskip("onnx")
    causal = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.from_pretrained(model_dir))
    path = hf.export_sparse(causal.eval(), tmp_path / "sparse.onnx", out)
    nodes = [n for n in onnx.load(str(path)).graph.node if n.op_type == "SparsePrefillAttention"]
    assert len(nodes) == LAYERS
    for node, layer in zip(nodes, config.layers, strict=True):
        kinds = next(a.ints for a in node.attribute if a.name == "kind")
        assert list(kinds) == [int(h.kind) for h in layer]


def test_cli_budget_and_overwrite(model_dir, token_file, tmp_path):
    out = tmp_path / "patterns.json"
    out.write_text("keep me")
    args = ["--model", str(model_dir / "config.json"), "--calibration", str(token_file), "-o", str(out)]
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 2 and "--force" in " ".join(refused.output.split()) and out.read_text() == "keep me"
    result = CliRunner().invoke(app, [*args, "--force", "--budget", "2x", "--min-recall", "0", "--length", "256"])
    assert result.exit_code == 0, result.output
    config = load_config(out)
    assert config.model["search"]["budget_density"] == 0.5
    assert all(s["density"] <= 0.5 for layer in config.stats for s in layer)


@pytest.mark.parametrize(
    ("extra", "calibration", "message"),
    [
        ([], "missing.json", "does not exist"),
        ([], "text.txt", "no tokenizer"),
        (["--length", "5000"], "ids.json", "has 700 tokens"),
        (["--budget", "fast"], "ids.json", "budget"),
        (["--dtype", "int8"], "ids.json", "--dtype"),
        ([], "bad.json", "list of token ids"),
        ([], "oov.json", "outside the vocabulary"),
    ],
)
def test_cli_refuses_bad_input(model_dir, token_file, tmp_path, extra, calibration, message):
    (tmp_path / "text.txt").write_text("some words")
    (tmp_path / "bad.json").write_text('{"ids": [1, 2]}')
    (tmp_path / "oov.json").write_text(json.dumps([1, 2, VOCAB]))
    (tmp_path / "ids.json").write_text(token_file.read_text())
    args = ["--model", str(model_dir), "--calibration", str(tmp_path / calibration), "-o", str(tmp_path / "p.json")]
    result = CliRunner().invoke(app, [*args, *extra])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())  # rich wraps long lines
    assert not (tmp_path / "p.json").exists()


def test_model_directory_with_weights_is_loaded_not_reinitialised(model_dir, token_file, tmp_path):
    causal = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.from_pretrained(model_dir))
    with torch.no_grad():
        causal.model.layers[1].self_attn.k_proj.weight.mul_(3.0)  # unlike any fresh initialisation
    causal.save_pretrained(tmp_path / "weights")
    model, _ = load_model(tmp_path / "weights", seed=123)
    torch.testing.assert_close(model.layers[1].self_attn.k_proj.weight, causal.model.layers[1].self_attn.k_proj.weight)
    out = tmp_path / "p.json"
    args = ["--model", str(tmp_path / "weights"), "--calibration", str(token_file), "--length", "300", "-o", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert load_config(out).model["name"] == "weights"


def test_text_calibration_goes_through_the_tokenizer(model_dir, tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {"[UNK]": 0, **{f"w{i}": i + 1 for i in range(100)}}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    directory = tmp_path / "with-tokenizer"
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(directory)
    (directory / "config.json").write_text((model_dir / "config.json").read_text())
    _, tokenizer = load_model(directory)
    (tmp_path / "text.txt").write_text("w1 w2 zz w99 " * 30)
    ids = read_calibration(tmp_path / "text.txt", tokenizer, VOCAB, length=100)
    assert ids[:4].tolist() == [2, 3, 0, 100] and ids.numel() == 100
    out = tmp_path / "p.json"
    result = CliRunner().invoke(
        app, ["--model", str(directory), "--calibration", str(tmp_path / "text.txt"), "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert load_config(out).model["searched_length"] == 120


def test_model_errors(tmp_path):
    with pytest.raises(PatternError, match=r"no config\.json"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(PatternError, match="cannot read"):
        load_model(tmp_path)
    transformers.LlamaConfig(vocab_size=10, pad_token_id=50, num_hidden_layers=1).save_pretrained(tmp_path / "bad")
    with pytest.raises(PatternError, match="cannot build it"):
        load_model(tmp_path / "bad")
    with pytest.raises(PatternError, match="holds no tokens"):
        (tmp_path / "empty.json").write_text("[]")
        read_calibration(tmp_path / "empty.json", None, 10)
