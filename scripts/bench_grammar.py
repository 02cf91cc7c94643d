"""Grammar compile cost by schema size, as schema_limits.py quotes it: each schema
compiled in its own child under a hard address-space cap (RLIMIT_AS), so a
runaway compile cannot take the machine's memory.

    .venv/bin/python scripts/bench_grammar.py [--cap-mb 6000] [--timeout 120] 200 500 1000
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

CHILD = """
import json, resource, sys, time
import xgrammar
from transformers import AutoTokenizer
info = xgrammar.TokenizerInfo.from_huggingface(AutoTokenizer.from_pretrained(sys.argv[1]))
compiler = xgrammar.GrammarCompiler(info, max_threads=1, cache_enabled=False)
n, required = int(sys.argv[2]), sys.argv[3] == "1"
schema = {"type": "object", "properties": {f"p{i}": {"type": "string", "maxLength": 3} for i in range(n)}}
if required:
    schema["required"] = list(schema["properties"])
started = time.monotonic()
compiler.compile_json_schema(json.dumps(schema), any_whitespace=False)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
seconds = round(time.monotonic() - started, 2)
print(json.dumps({"properties": n, "required": required, "compile_s": seconds, "peak_mb": round(peak)}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("sizes", nargs="*", type=int, default=[200, 500, 1000])
    parser.add_argument("--tokenizer", default="var/models/tiny-random")
    parser.add_argument("--cap-mb", type=int, default=6000)
    parser.add_argument("--timeout", type=float, default=120)
    parser.add_argument("--required", action="store_true", help="every property required")
    args = parser.parse_args()
    cap = args.cap_mb * 1024 * 1024

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    for size in args.sizes:
        command = [sys.executable, "-c", CHILD, args.tokenizer, str(size), "1" if args.required else "0"]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout, preexec_fn=limit)
            print(done.stdout.strip() or json.dumps({"properties": size, "failed": done.stderr.strip()[-200:]}))
        except subprocess.TimeoutExpired:
            print(json.dumps({"properties": size, "timed_out_s": args.timeout}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
