"""gemma-mtp: lossless speculative decoding for Gemma 4 with its Multi-Token-Prediction assistants.

```python
from gemma_mtp import Runtime, SamplingParams

rt = Runtime.load("google/gemma-4-E2B-it", device="cuda", dtype="bfloat16")   # assistant resolved
out = rt.generate("Why is the sky blue?", SamplingParams(max_new_tokens=128))
out.text, out.stats.acceptance_rate
```
"""

from gemma_mtp.chat import ToolCall
from gemma_mtp.constraints import ConstraintError
from gemma_mtp.lifecycle import RequestSummary, SummaryListener
from gemma_mtp.params import SamplingParams
from gemma_mtp.results import ChatDelta, ChatResult, GenerationResult, StreamDelta
from gemma_mtp.runtime import Prompt, Runtime
from gemma_mtp.stats import RoundListener, RoundStats, SpeculationStats, SpeculationTotals
from gemma_mtp.streams import AsyncRequestStream, RequestStream

__version__ = "0.1.0"

__all__ = [
    "AsyncRequestStream",
    "ChatDelta",
    "ChatResult",
    "ConstraintError",
    "GenerationResult",
    "Prompt",
    "RequestStream",
    "RequestSummary",
    "RoundListener",
    "RoundStats",
    "Runtime",
    "SamplingParams",
    "SpeculationStats",
    "SpeculationTotals",
    "StreamDelta",
    "SummaryListener",
    "ToolCall",
    "__version__",
]
