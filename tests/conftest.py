"""Suite-wide settings.

The kit models are tiny: intra-op parallelism buys nothing on them and, on a small machine running other
work, oversubscribed threads make each forward pass many times slower. One thread keeps timings steady.
"""

from __future__ import annotations

import torch

torch.set_num_threads(1)
