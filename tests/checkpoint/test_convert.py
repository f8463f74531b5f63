"""specdec convert: a GGUF file or a Hugging Face checkpoint -> a specdec_w4a16 folder. Its 4-bit layers are the
source's, code for code; transformers' own model classes, given the folder's weights (dequantized here: the
quantizer is tested in tests/engines), compute the runner's logits; the loaders refuse a damaged folder with a
ValueError naming the field or tensor."""
import json

import pytest
import torch
from helpers import tiny_hf_model, write_tiny_gguf
from safetensors.torch import load_file, save_file
from specdec_kernels.checkpoint.convert import convert, dequantize_folder
from specdec_kernels.checkpoint.format import QUANTIZED_FIELDS
from specdec_kernels.cli import main
from specdec_kernels.models import load_gguf, load_hf

TOKENS = torch.tensor([[3, 17, 22, 5, 39, 23, 4, 11]])


def transformers_on(folder: str):
    """transformers' own model class on the folder's weights, the 4-bit ones dequantized (dequantize_folder: the
    float baseline the engine benchmarks use)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(dequantize_folder(folder, f"{folder}-float"), dtype=torch.float32).eval()


def runner_logits(model):
    model.reset()
    logits, _ = model(TOKENS)
    return logits


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("gguf") / "tiny.gguf")
    write_tiny_gguf(path, logit_scale=5.0, n_layers=2)
    return path


def test_a_gguf_file_converts_code_for_code(gguf_file, tmp_path):
    folder = convert(gguf_file, str(tmp_path / "out"))
    source, converted = load_gguf(gguf_file), load_hf(folder)
    for a, b in zip(source.blocks, converted.blocks):
        for layer in ("wqkv", "wo", "w_gate_up", "w_down"):
            for field in QUANTIZED_FIELDS:
                assert torch.equal(getattr(getattr(a, layer), field), getattr(getattr(b, layer), field)), layer
    assert torch.equal(runner_logits(source), runner_logits(converted))  # float head and embedding: as they were
    with torch.no_grad():
        theirs = transformers_on(folder)(TOKENS).logits
    torch.testing.assert_close(theirs, runner_logits(source), atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_a_float_checkpoint_converts_as_the_runner_quantizes_it(tmp_path, model_type):
    tiny_hf_model(model_type).save_pretrained(tmp_path / "float")
    folder = convert(str(tmp_path / "float"), str(tmp_path / "out"), group_size=32)
    runner = load_hf(str(tmp_path / "float"), group_size=32)
    config = json.loads(open(f"{folder}/config.json").read())
    assert config["quantization_config"]["modules_not_converted"] == []  # the untied head is 4-bit too
    with torch.no_grad():
        theirs = transformers_on(folder)(TOKENS).logits
    torch.testing.assert_close(theirs, runner_logits(runner), atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(runner_logits(load_hf(folder)), runner_logits(runner), atol=0, rtol=0)


def test_what_does_not_convert_exactly_is_refused(tmp_path):
    float_gguf = str(tmp_path / "float.gguf")
    write_tiny_gguf(float_gguf, q4=False)
    with pytest.raises(ValueError, match="model.layers.0.self_attn.q_proj: a RowwiseLinear is not 4-bit"):
        convert(float_gguf, str(tmp_path / "out"))
    assert not (tmp_path / "out" / "config.json").exists()


@pytest.mark.parametrize("change, named", [
    (lambda c: c.update(version=2), "quantization_config.version must be 1"),
    (lambda c: c.update(group_size=48), "quantization_config.group_size must be one of"),
    (lambda c: c.pop("bits"), "quantization_config has no 'bits'"),
    (lambda c: c.update(quant_method="specdec_w8"), "quant_method 'specdec_w8' is not supported"),
])
def test_a_damaged_config_is_refused_naming_the_field(gguf_file, tmp_path, change, named):
    folder = convert(gguf_file, str(tmp_path / "out"))
    config = json.loads(open(f"{folder}/config.json").read())
    change(config["quantization_config"])
    (tmp_path / "out" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=named):
        load_hf(folder)


@pytest.mark.parametrize("tensor, change, named", [
    ("model.layers.0.mlp.up_proj.scales", lambda t: t[:, :1], "up_proj.scales must be"),
    ("model.layers.0.mlp.up_proj.qweight", lambda t: t.to(torch.int32), "up_proj.qweight must be uint8"),
    ("model.layers.1.self_attn.k_proj.mins", None, "tensor layers.1.self_attn.k_proj.mins is missing"),
])
def test_a_damaged_tensor_is_refused_naming_it(gguf_file, tmp_path, tensor, change, named):
    folder = convert(gguf_file, str(tmp_path / "out"))
    tensors = load_file(f"{folder}/model.safetensors")
    if change is None:
        del tensors[tensor]
    else:
        tensors[tensor] = change(tensors[tensor]).contiguous()
    save_file(tensors, f"{folder}/model.safetensors")
    with pytest.raises(ValueError, match=named):
        load_hf(folder)


def test_the_command_line(gguf_file, tmp_path, capsys):
    assert main(["convert", gguf_file, str(tmp_path / "out")]) in (0, None)
    assert "wrote" in capsys.readouterr().out and (tmp_path / "out" / "model.safetensors").exists()
    (tmp_path / "file").write_text("")
    assert main(["convert", gguf_file, str(tmp_path / "file")]) == 2
    assert "exists and is not a directory" in capsys.readouterr().err
