"""LangChain integration for gemma-mtp: Gemma 4 chat decoded 2-3x faster by its MTP assistant."""

from langchain_gemma_mtp.callbacks import SpeculationCallbackHandler, SpeculationTotals
from langchain_gemma_mtp.chat_models import ChatGemmaMTP

__all__ = ["ChatGemmaMTP", "SpeculationCallbackHandler", "SpeculationTotals"]
