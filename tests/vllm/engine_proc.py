"""One vLLM engine in its own process for the tests: greedy output as JSON, optionally held up.

Writes ``{"tokens": [[...], ...]}`` to ``--result``; with ``--hold`` it then waits for ``exit``
on stdin (while it is up, an ``mx`` engine serves as a P2P source).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

PROMPTS = ["w1 w2 w3 w4 w5", "w100 w7 w42", "w9"]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--load-format", default="mx")
    ap.add_argument("--dtype", default="float16")
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--hold", action="store_true")
    ap.add_argument("--result", required=True)
    args = ap.parse_args()

    from vllm import LLM, SamplingParams

    llm = LLM(model=args.model, load_format=args.load_format, dtype=args.dtype, max_model_len=256,
              enforce_eager=True, max_num_seqs=4, gpu_memory_utilization=0.08, seed=0)
    outs = llm.generate(PROMPTS, SamplingParams(temperature=0.0, max_tokens=args.max_tokens, ignore_eos=True))
    tmp = args.result + ".tmp"
    with open(tmp, "w") as fh:
        json.dump({"tokens": [list(o.outputs[0].token_ids) for o in outs]}, fh)
    os.replace(tmp, args.result)
    if args.hold:
        for line in sys.stdin:
            if line.strip() == "exit":
                break
    del llm
    return 0


if __name__ == "__main__":
    sys.exit(main())
