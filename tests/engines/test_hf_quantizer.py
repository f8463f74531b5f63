"""The transformers quantizer for specdec_w4a16 folders: from_pretrained makes each decoder linear a
W4A16Linear (no float weight kept) whose logits and greedy tokens are those of transformers on the dequantized
weights, and a config field or stored tensor outside the format is a ValueError naming it."""
import json

import pytest
import torch
from specdec_kernels import quant
from specdec_kernels.checkpoint.format import quantization_config

transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")
from specdec_kernels.engines.hf_quantizer import SpecdecW4A16Config, register  # needs the two above

GROUP_SIZE = 32
PROMPT = torch.tensor([[3, 17, 42, 5, 9, 23, 61, 11]])
Q_PROJ = "model.layers.0.self_attn.q_proj"
QUANTIZATION_CONFIG = quantization_config(GROUP_SIZE)  # modules_not_converted: lm_head


def tiny_model(model_type: str):
    """Random, tied embeddings; Qwen2's q/k/v biases drawn large enough to matter (transformers starts them
    at 0)."""
    torch.manual_seed(0)
    common = {"vocab_size": 64, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "tie_word_embeddings": True,
              "initializer_range": 0.1, "dtype": "float32"}
    if model_type == "llama":
        return transformers.LlamaForCausalLM(transformers.LlamaConfig(**common)).eval()
    model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common)).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.5)
    return model


def decoder_linears(model) -> dict:
    return {name: module for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and name != "lm_head"}


def quantized_and_dequantized(model_type: str, scale_dtype: torch.dtype):
    """The checkpoint's tensors (each decoder linear RTN-quantized) and the float model on the same
    weights."""
    model = tiny_model(model_type)
    tensors = {name: t.clone() for name, t in model.state_dict().items() if name != "lm_head.weight"}  # tied
    for name, linear in decoder_linears(model).items():
        qw = quant.quantize_rtn(linear.weight, GROUP_SIZE, scale_dtype=scale_dtype)
        del tensors[f"{name}.weight"]
        tensors.update({f"{name}.qweight": qw.qweight, f"{name}.scales": qw.scales, f"{name}.mins": qw.mins})
        with torch.no_grad():
            linear.weight.copy_(quant.dequantize(qw))
    return tensors, model


def write_folder(folder, config, tensors, quantization_config=QUANTIZATION_CONFIG):
    folder.mkdir(exist_ok=True)
    config = {**config.to_dict(), "quantization_config": quantization_config}
    (folder / "config.json").write_text(json.dumps(config))
    safetensors_torch.save_file({name: t.contiguous() for name, t in tensors.items()},
                                str(folder / "model.safetensors"))
    return folder


def load(folder, **kwargs):
    register()
    return transformers.AutoModelForCausalLM.from_pretrained(folder, **kwargs)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """A good Llama folder, its tensors and the model on its dequantized weights."""
    tensors, dequantized = quantized_and_dequantized("llama", torch.float16)
    return write_folder(tmp_path_factory.mktemp("llama"), dequantized.config, tensors), tensors, dequantized


@pytest.fixture(scope="module")
def qwen2():
    """Qwen2's tensors (q_proj has a bias) and the model on their dequantized weights."""
    return quantized_and_dequantized("qwen2", torch.float16)


@pytest.mark.parametrize("model_type,scale_dtype", [("llama", torch.float16), ("qwen2", torch.float32),
                                                    ("qwen2", torch.bfloat16)], ids=str)
def test_loaded_model_runs_on_w4a16_and_matches_the_dequantized_model(tmp_path, model_type, scale_dtype):
    tensors, dequantized = quantized_and_dequantized(model_type, scale_dtype)
    model, loading = load(write_folder(tmp_path, dequantized.config, tensors), output_loading_info=True)
    assert not any(loading[kind] for kind in ("missing_keys", "unexpected_keys", "mismatched_keys")), loading
    for name, reference in decoder_linears(dequantized).items():
        layer = model.get_submodule(name)
        assert isinstance(layer, quant.W4A16Linear), name
        n, k = reference.weight.shape
        held = [*layer.parameters(), *layer.buffers(), *layer.packed]
        assert not any(t.is_floating_point() and t.numel() >= n * k for t in held), name
        assert layer.scales.dtype == scale_dtype
        if reference.bias is not None:
            torch.testing.assert_close(layer.bias, reference.bias, rtol=0, atol=0)

    with torch.no_grad():
        logits, expected = model(PROMPT).logits, dequantized(PROMPT).logits
    # float32 activations in 3 digits and another summation order: ~1e-5 here, 30x inside the tolerance; the
    # dequantized model's greedy tokens win by >= 2.8e-3, so the generated tokens must agree
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())

    greedy = {"max_new_tokens": 12, "do_sample": False, "attention_mask": torch.ones_like(PROMPT),
              "pad_token_id": 0}
    assert torch.equal(model.generate(PROMPT, **greedy), dequantized.generate(PROMPT, **greedy))


def test_logits_differ_from_the_float_model(llama):
    """Negative control: the check above sees the 4-bit rounding (the unquantized weights give other
    logits)."""
    model = load(llama[0])
    with torch.no_grad():
        assert (model(PROMPT).logits - tiny_model("llama")(PROMPT).logits).abs().max() > 1e-3


def test_bfloat16_model_keeps_the_stored_scales_and_gives_bfloat16_logits(llama):
    folder, _, dequantized = llama
    model = load(folder, dtype=torch.bfloat16)
    assert model.get_submodule(Q_PROJ).scales.dtype == torch.float16  # as stored
    with torch.no_grad():
        logits = model(PROMPT).logits
    assert logits.dtype == torch.bfloat16
    # bfloat16 activations and norms (8-bit mantissas) through two layers: ~1% of the logits' scale here
    expected = dequantized(PROMPT).logits
    torch.testing.assert_close(logits.float(), expected, rtol=0.05, atol=0.05 * expected.abs().max().item())


def test_save_pretrained_writes_the_format_back(llama, tmp_path):
    model = load(llama[0])
    model.save_pretrained(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(load(tmp_path)(PROMPT).logits, model(PROMPT).logits, rtol=0, atol=0)


def test_float_checkpoint_is_refused(llama, tmp_path):
    """The quantizer loads only checkpoints already in the format: it does not quantize a float one."""
    llama[2].save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="pre-quantized"):
        load(tmp_path, quantization_config=SpecdecW4A16Config(**QUANTIZATION_CONFIG))


def test_register_twice_is_harmless():
    register()
    register()


@pytest.mark.parametrize("field,value", [("quant_method", "gptq"), ("version", 2), ("bits", 8),
                                         ("group_size", 48)])
def test_config_outside_the_format_names_the_field(field, value):
    with pytest.raises(ValueError, match=f"quantization_config.{field} "):
        SpecdecW4A16Config.from_dict({**QUANTIZATION_CONFIG, field: value})


# group_size 128: a multiple of 32, but not a divisor of the layers' 64 inputs
@pytest.mark.parametrize("field,value", [("version", 2), ("bits", 8), ("group_size", 48),
                                         ("group_size", 128)])
def test_folder_with_a_config_outside_the_format_fails_to_load(llama, tmp_path, field, value):
    _, tensors, dequantized = llama
    folder = write_folder(tmp_path, dequantized.config, tensors, {**QUANTIZATION_CONFIG, field: value})
    with pytest.raises(ValueError, match=f"quantization_config.{field} "):
        load(folder)


ROWS = ("qweight", "scales", "mins")
# a change to Qwen2's stored q_proj -> (the tensor its error names, {field: what it becomes; None: dropped})
BAD_TENSORS = {
    "missing scales": ("scales", {"scales": None}),
    "signed qweight": ("qweight", {"qweight": lambda t: t.view(torch.int8)}),
    "float qweight": ("qweight", {"qweight": lambda t: t.float()}),
    "short qweight": ("qweight", {"qweight": lambda t: t[:, :-2]}),
    "scales of another group size": ("scales", {"scales": lambda t: t[:, :1]}),
    "mins of another dtype than the scales": ("mins", {"mins": lambda t: t.float()}),
    "integer mins": ("mins", {"mins": lambda t: t.to(torch.int16)}),
    "rows of another layer": ("qweight", {field: lambda t: t[:-4] for field in ROWS}),
    "missing bias": ("bias", {"bias": None}),
    "bias of another layer": ("bias", {"bias": lambda t: t[:-4]}),
}


@pytest.mark.parametrize("change", BAD_TENSORS)
def test_stored_tensor_outside_the_format_names_it(qwen2, tmp_path, change):
    named, alterations = BAD_TENSORS[change]
    tensors = dict(qwen2[0])
    for field, alter in alterations.items():
        stored = tensors.pop(f"{Q_PROJ}.{field}")
        if alter is not None:
            tensors[f"{Q_PROJ}.{field}"] = alter(stored)
    with pytest.raises(ValueError, match=rf"{Q_PROJ}\.{named} "):
        load(write_folder(tmp_path, qwen2[1].config, tensors))


@pytest.mark.model
def test_the_converted_embedded_model_gives_the_runners_logits(tmp_path):
    """SmolLM2-135M-Instruct Q4_1 through specdec convert: transformers with this quantizer against our runner on
    the same folder. Same 4-bit GEMMs (W4A16Linear, 3 activation digits in both); attention, norms and RoPE are
    each engine's own, so logits agree to float32 rounding over 30 layers, and the greedy tokens are the same."""
    from specdec_kernels.checkpoint.convert import convert
    from specdec_kernels.decoding import generate
    from specdec_kernels.models import embedded_model_path, load_hf

    folder = convert(embedded_model_path(), str(tmp_path / "smollm2-w4"))
    model, runner = load(folder), load_hf(folder, max_seq_len=256)
    tokens = torch.tensor([[1, 504, 3458, 314, 253, 1789, 28, 42, 2988, 314]])
    with torch.no_grad():
        theirs = model(tokens).logits
    ours, _ = runner(tokens)
    assert all(isinstance(layer, quant.W4A16Linear) for layer in decoder_linears(model).values())
    torch.testing.assert_close(theirs, ours, atol=2e-3 * ours.abs().max().item(), rtol=0)
    with torch.no_grad():
        out = model.generate(tokens, attention_mask=torch.ones_like(tokens), max_new_tokens=24, do_sample=False)
    runner.reset()
    assert out[0, tokens.shape[1]:].tolist() == generate(runner, tokens[0].tolist(), 24).tokens
