"""LlamaIndex adapter for gemma-mtp: Gemma 4 with speculative decoding by its MTP assistant."""

from llama_index_gemma_mtp.base import GemmaMTP
from llama_index_gemma_mtp.events import (
    SpeculationRoundEvent,
    SpeculationStatsHandler,
    SpeculationSummaryEvent,
)

__all__ = ["GemmaMTP", "SpeculationRoundEvent", "SpeculationStatsHandler", "SpeculationSummaryEvent"]
