"""Time the Quantization and Parameters pages under AppTest: first run, rerun, and a change of each setting.

Run from the repository root: `python bench/page_response.py`. Each page runs in a fresh process with a fresh
data directory. So the first (cold) run includes importing torch and computing every table, and later runs
show what a user waits for after changing one setting. Times are wall-clock seconds on the machine that runs
it, so compare them with each other (the ratio to the warm rerun), not with another machine's.
"""

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

STEPS = {
    "quantization.py": [
        ("layer", "selectbox", "quant_layer", "blocks.2.fc1"),
        ("NF4 block size", "selectbox", "quant_block_size", 128),
        ("schemes", "multiselect", "quant_schemes", [0, 2]),
        ("block index", "slider", "quant_block_index", 10),
    ],
    "parameters.py": [
        ("r", "selectbox", "params_r", 16),
        ("target modules", "selectbox", "params_targets", "all"),
        ("method", "selectbox", "params_method", "lora"),
        ("calculator preset", "selectbox", "calc_preset", "Llama-3-8B"),
        ("calculator hidden size", "text_input", "calc_hidden_size", "5120"),
    ],
}


def measure(page: str) -> None:
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "pages" / page), default_timeout=600)
    start = time.perf_counter()
    at.run()
    cold = time.perf_counter() - start
    assert not at.exception, [e.message for e in at.exception]
    start = time.perf_counter()
    at.run()
    warm = time.perf_counter() - start
    print(f"{page}: cold {cold:.2f} s, warm rerun {warm:.2f} s")
    for name, kind, key, value in STEPS[page]:
        getattr(at, kind)(key=key).set_value(value)
        start = time.perf_counter()
        at.run()
        seconds = time.perf_counter() - start
        assert not at.exception, [e.message for e in at.exception]
        print(f"  change {name}: {seconds:.2f} s ({seconds / warm:.0f}x the warm rerun)")


if __name__ == "__main__":
    if len(sys.argv) == 2:
        measure(sys.argv[1])
    else:
        for page in STEPS:
            with tempfile.TemporaryDirectory() as home:
                env = {**os.environ, "TINYLORA_HOME": home}
                subprocess.run([sys.executable, __file__, page], env=env, cwd=ROOT, check=True)
