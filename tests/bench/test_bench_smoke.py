"""The benchmarks run end to end on tiny settings and write what they promise (not their numbers)."""
import argparse
import json

import pytest
import torch
from specdec_kernels import machine
from specdec_kernels.bench import e2e, forward, tree_attention, verify, w4a16
from specdec_kernels.bench.common import CacheFlusher, machine_info
from specdec_kernels.cli.args import UsageError
from specdec_kernels.decoding import STOP_REASONS
from specdec_kernels.machine import cpu_description
from specdec_kernels.models import RUNNER_X_DIGITS


def test_w4a16_point():
    row = w4a16.bench_point(64, 128, 32, 3, torch.device("cpu"), 2, 1e10, 1e11, CacheFlusher(torch.device("cpu"), 1))
    assert row["vs_dense_16"] > 0 and row["vs_torch_int4"] is not None and row["roofline"] > 0


def test_tree_attention_point():
    row = tree_attention.bench_point("smollm2", 8, 64, 2, 1e10, 1e11, 6e11)
    assert row["vs_sdpa"] > 0 and 0 < row["tile_roofline"] <= row["roofline"]


def test_verify_point_and_naive_agree():
    row = verify.bench_point(16, 2000, 2)
    assert row["greedy_speedup"] > 0 and row["accept_len"] >= 1
    tokens, parents = verify.eagle_like_tree(16, seed=1)
    logits = torch.randn(1, 16, 2000)
    logits[0, 0, tokens[0, 1]] += 10  # the walk takes at least one step
    path, bonus = verify.naive_greedy(tokens, logits, verify.leaf_paths(parents))
    from specdec_kernels import ops

    accept_idx, accept_len, ours_bonus = ops.tree_verify_greedy(tokens, parents, logits)
    assert path.tolist() == accept_idx[0, : int(accept_len[0])].tolist() and bonus == int(ours_bonus[0])


def test_results_name_the_cpu_with_its_family_and_model(tmp_path):
    """A VM may call a Zen 3 and a Zen 5 both 'AMD EPYC': the family and model numbers tell them apart."""
    with open("/proc/cpuinfo") as f:
        cpuinfo = f.read()
    family = next(line.split(":")[1].strip() for line in cpuinfo.splitlines() if line.startswith("cpu family"))
    assert f"family {family}, model " in cpu_description()
    assert machine_info(torch.device("cpu"))["cpu"] == cpu_description()


def test_a_cpu_without_numbers_is_named_alone(monkeypatch):
    monkeypatch.setattr(machine, "cpuinfo_fields", lambda: {"model name": "Some CPU"})
    assert cpu_description() == "Some CPU"
    monkeypatch.setattr(machine, "cpuinfo_fields", lambda: {})  # no /proc/cpuinfo: the platform's name
    assert cpu_description() and "family" not in cpu_description()


def test_forward_cost_rows(tmp_path):
    from helpers import write_tiny_gguf
    from specdec_kernels.models import load_model

    path = str(tmp_path / "tiny.gguf")
    write_tiny_gguf(path)
    model = load_model(path)
    rows = forward.measure(model, [4, 2], cache=8, repeats=2, bandwidth=1e10, target_speedup=1.5)
    assert [row["T"] for row in rows] == [1, 2, 4]  # T = 1, the reference, is always measured
    assert rows[0]["vs_T1"] == 1 and rows[0]["tokens_per_forward_needed"] == 1.5
    assert all(row["ms"] > 0 and row["memory_roofline"] > 0 for row in rows)
    assert int(model.cache_lens[0]) == 8  # timing commits nothing
    assert forward.weight_bytes(model) > 0
    with pytest.raises(ValueError, match="exceeds"):
        forward.measure(model, [8], cache=model.max_seq_len - 4, repeats=1, bandwidth=1e10, target_speedup=1.5)


def test_forward_stages_name_each_gemm_and_account_for_the_wall_time(tmp_path):
    from helpers import write_tiny_gguf
    from specdec_kernels.models import load_model

    path = str(tmp_path / "tiny.gguf")
    write_tiny_gguf(path)
    model = load_model(path)
    forward.measure(model, [2], cache=8, repeats=1, bandwidth=1e10, target_speedup=1.5)  # sets the cache up
    stages = forward.stage_times(model, [1, 3], repeats=2)
    assert list(stages) == [1, 3]
    c = model.config
    qkv = (c.n_heads + 2 * c.n_kv_heads) * c.head_dim
    for per_op in stages.values():
        assert all(ms >= 0 for ms in per_op.values())
        assert "tree_attention" in per_op and "outside ops (Python, dispatch)" in per_op
        gemms = [name for name in per_op if name.startswith("W4A16")]
        assert any(name.endswith(f" x {c.dim}") and int(name.split()[1]) >= qkv for name in gemms), gemms
    assert int(model.cache_lens[0]) == 8  # profiling commits nothing
    with pytest.raises(ValueError, match="exceeds"):
        forward.stage_times(model, [model.max_seq_len], repeats=1)


def test_token_counts_parse_and_refuse():
    from specdec_kernels.cli.args import token_counts

    assert token_counts("1,4, 16") == [1, 4, 16] and token_counts("") == []
    for text in ("1,x", "0,4", "-2"):
        with pytest.raises(argparse.ArgumentTypeError, match="integers >= 1"):
            token_counts(text)


@pytest.mark.model
def test_e2e_json_keys(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"question_id": 1, "category": "qa", "turns": ["Hi", "And then?"]}) + "\n")
    parser = argparse.ArgumentParser()
    e2e.add_arguments(parser)
    out = tmp_path / "e2e.json"
    methods = ("vanilla", "chain", "eagle2", "chain-pld", "eagle2-pld")
    args = parser.parse_args(["--prompts", str(prompts), "--methods", ",".join(methods), "--max-new-tokens", "8",
                              "--json", str(out)])
    assert e2e.run(args) == 0
    result = json.loads(out.read_text())
    assert result["settings"]["x_digits"] == RUNNER_X_DIGITS
    for method in methods:
        assert set(result["methods"][method]) >= {"tokens_per_s", "speedup", "mean_accepted"}
    for record in result["prompts"]:
        assert set(record) >= {"question_id", "category", "method", "new_tokens", "seconds", "steps", "mean_accepted",
                               "identical_to_vanilla", "output", "stop_reasons"}
        assert record["identical_to_vanilla"] and len(record["output"]) == 2
        assert len(record["stop_reasons"]) == 2 and set(record["stop_reasons"]) <= set(STOP_REASONS)


def test_torch_int4_baseline_computes_the_same_weights():
    """The int4 baseline is only a fair comparison if it multiplies by the same weights: torch computes
    W = (q - 8) * s + z, so the benchmark passes z = m + 8 s."""
    from helpers import random_quantized
    from specdec_kernels import reference

    qw = random_quantized(64, 256, 128, scale_dtype=torch.float32)
    int4 = w4a16._torch_int4(reference.unpack_int4(qw.qweight), qw, torch.device("cpu"))
    if int4 is None:
        pytest.skip("this torch build has no CPU int4 weight-only matmul")
    x = torch.randn(3, 256).bfloat16()
    expected = reference.w4a16_matmul(x.float(), qw.qweight, qw.scales, qw.mins, 128)
    scale = expected.abs().max().item()
    torch.testing.assert_close(int4(x).float(), expected, atol=2e-2 * scale, rtol=2e-2)


@pytest.mark.parametrize("method, message", [("ada", "no draft length predictor for .*pass --predictor PATH"),
                                             ("hier", "no intermediate model for .*pass --intermediate PATH"),
                                             ("chain", "no EAGLE head for .*pass --head")])
def test_e2e_methods_name_their_missing_parts(tmp_path, method, message):
    """A model without the parts a method needs: one line naming what is missing, before any model loads."""
    model = tmp_path / "tiny.gguf"
    model.write_bytes(b"GGUF")  # --model must look like a GGUF file; it is never read
    head = ["--head", str(model)] if method != "chain" else []  # any readable file: never read either
    parser = argparse.ArgumentParser()
    e2e.add_arguments(parser)
    with pytest.raises(UsageError, match=message):
        e2e.run(parser.parse_args(["--model", str(model), "--methods", f"vanilla,{method}"] + head))


def test_e2e_refuses_bad_settings(tmp_path, capsys):
    model = tmp_path / "tiny.gguf"
    model.write_bytes(b"GGUF")
    parser = argparse.ArgumentParser()
    e2e.add_arguments(parser)
    with pytest.raises(UsageError, match="min_draft must be in"):
        e2e.run(parser.parse_args(["--model", str(model), "--methods", "hier", "--min-draft", "300"]))
    with pytest.raises(SystemExit):
        parser.parse_args(["--model", str(model), "--methods", "ada", "--predictor", str(tmp_path / "none.ldlp.pt")])
    assert "none.ldlp.pt: no such file" in capsys.readouterr().err
