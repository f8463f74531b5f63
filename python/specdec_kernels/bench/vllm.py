"""vLLM serving a specdec_w4a16 folder against vLLM's own unquantized run of the same model (run in vLLM's
environment, .venv-vllm): specdec bench vllm --quantized FOLDER --float FOLDER [--eagle3 HEAD] [--json PATH]

Each server answers the same prompts, greedy, with a fixed number of new tokens (end of sequence ignored): one
request at a time, then 8 at a time. Reported: generated tokens per second of wall time at each concurrency.
The float folder is a transformers checkpoint of the same weights (`bench vllm --write-float QUANTIZED FOLDER`
makes one: the 4-bit weights dequantized to float32).
"""
import concurrent.futures
import json
import time
import urllib.request

from specdec_kernels.bench.common import print_table, write_json

CONCURRENCY = (1, 8)
REQUESTS_PER_LANE = 4


def add_arguments(parser):
    parser.add_argument("--quantized", help="a specdec_w4a16 folder (specdec convert)")
    parser.add_argument("--float", dest="float_folder", help="the same model unquantized (transformers folder)")
    parser.add_argument("--write-float", nargs=2, metavar=("QUANTIZED", "FOLDER"),
                        help="write FOLDER: the specdec_w4a16 folder's model as a float32 checkpoint, and stop")
    parser.add_argument("--eagle3", help="also serve the quantized folder with this EAGLE-3 head drafting (vLLM's "
                        "eagle3 method; a folder in the public layout, drafters.eagle3_file)")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--json", help="write the results here")


def generate(url: str, model: str, prompt_ids: list, max_tokens: int) -> int:
    body = json.dumps({"model": model, "prompt": prompt_ids, "max_tokens": max_tokens, "temperature": 0.0,
                       "ignore_eos": True}).encode()
    request = urllib.request.Request(f"{url}/v1/completions", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=900) as response:
        return json.loads(response.read())["usage"]["completion_tokens"]


def throughput(url: str, model: str, prompts: list, lanes: int, max_tokens: int) -> float:
    """Generated tokens per second with `lanes` requests in flight."""
    requests = [prompts[i % len(prompts)] for i in range(lanes * REQUESTS_PER_LANE)]
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(lanes) as pool:
        tokens = sum(pool.map(lambda ids: generate(url, model, ids, max_tokens), requests))
    return tokens / (time.perf_counter() - start)


def run(args):
    from specdec_kernels.bench.e2e import first_turns
    from specdec_kernels.engines.transformers import chat_prompt_ids, load_tokenizer
    from specdec_kernels.engines.vllm_server import complete, eagle3_config, speculative_counts, vllm_server

    if args.write_float:
        from specdec_kernels.checkpoint.convert import dequantize_folder

        print(f"wrote {dequantize_folder(*args.write_float)}")
        return
    tokenizer = load_tokenizer(args.quantized)
    prompts = [chat_prompt_ids(tokenizer, [{"role": "user", "content": turn}]) for turn in first_turns()[:8]]
    runs = {"specdec_w4a16": (args.quantized, []), "unquantized (float32)": (args.float_folder, [])}
    if args.eagle3:
        runs["specdec_w4a16 + EAGLE-3 head"] = (args.quantized, eagle3_config(args.eagle3))
    results = {}
    for name, (folder, extra) in runs.items():
        with vllm_server(folder, "--max-num-seqs", str(max(CONCURRENCY)), *extra) as url:
            complete(url, folder, prompts[0], 8)  # warm-up
            results[name] = {f"{lanes} concurrent": throughput(url, folder, prompts, lanes, args.max_tokens)
                             for lanes in CONCURRENCY}
            if extra:
                results[name]["accepted per draft"] = speculative_counts(url)["mean_accepted"]
    base = results["unquantized (float32)"]
    keys = [f"{lanes} concurrent" for lanes in CONCURRENCY]
    rows = [{"name": name, **r, **{f"{k} ratio": r[k] / base[k] for k in keys}} for name, r in results.items()]
    print_table(rows, [("name", "vLLM", "{}")] + [(k, f"tokens/s, {k}", "{:.1f}") for k in keys]
                + [(f"{k} ratio", f"vs float, {k}", "{:.2f}x") for k in keys]
                + [("accepted per draft", "accepted per draft", "{:.2f}")])
    if args.json:
        write_json(args.json, {"results": results, "max_tokens": args.max_tokens,
                               "requests_per_lane": REQUESTS_PER_LANE})
