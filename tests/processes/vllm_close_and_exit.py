"""Load the kit pair on vLLM's engine, decode, close the runtime and let the interpreter exit, as a script does.

Run by ``tests/integration/vllm/test_vllm_exit.py``, which checks that the process exits with code 0 and writes
nothing about an ignored exception (vLLM's ``AsyncLLM.__del__`` once printed a ``TypeError`` at interpreter exit,
for a runtime that a script's global variable still held).
"""

from __future__ import annotations

from gemma_mtp import Runtime, SamplingParams
from gemma_mtp.testing import tiny_pair

if __name__ == "__main__":  # vLLM starts its engine process by spawning, which imports this module again
    pair = tiny_pair("dense", agreeing=True, head_dim=32)
    rt = Runtime.load(
        str(pair.target_dir),
        str(pair.assistant_dir),
        backend="vllm",
        dtype="float32",
        enforce_eager=True,
        max_model_len=512,
        kv_cache_memory_bytes=256 << 20,
    )
    stream = rt.stream("Leave this stream after its first step.", SamplingParams(max_new_tokens=40))
    next(iter(stream))
    stream.close()
    print("decoded:", rt.generate("Hello", SamplingParams(max_new_tokens=4)).token_ids)
    rt.close()
