"""Measuring gemma-mtp: the code behind ``gemma-mtp bench``, ``tune`` and ``verify`` and ``benchmarks/``.

Framework-free like the rest of the runtime; the CLI and the scripts in ``benchmarks/`` only parse
arguments and print or write what these functions return.
"""

from gemma_mtp.benchmarking.compare import METHODS, ComparisonReport, MethodSummary, compare_methods
from gemma_mtp.benchmarking.measure import MachineInfo, PeakMemory, describe_machine
from gemma_mtp.benchmarking.positions import DraftPositionReport, PositionAcceptance, compare_draft_positions
from gemma_mtp.benchmarking.prompts import DEFAULT_PROMPTS, as_chat, load_prompts, prompt_preview
from gemma_mtp.benchmarking.sweep import (
    DEFAULT_DRAFT_LENGTHS,
    DEFAULT_TEMPERATURES,
    ForwardCosts,
    SweepPoint,
    SweepReport,
    measure_forward_costs,
    sweep,
)
from gemma_mtp.benchmarking.verify import DEFAULT_TOLERANCES, VerifyReport, default_tolerance, verify_greedy

__all__ = [
    "DEFAULT_DRAFT_LENGTHS",
    "DEFAULT_PROMPTS",
    "DEFAULT_TEMPERATURES",
    "DEFAULT_TOLERANCES",
    "METHODS",
    "ComparisonReport",
    "DraftPositionReport",
    "ForwardCosts",
    "MachineInfo",
    "MethodSummary",
    "PeakMemory",
    "PositionAcceptance",
    "SweepPoint",
    "SweepReport",
    "VerifyReport",
    "as_chat",
    "compare_draft_positions",
    "compare_methods",
    "default_tolerance",
    "describe_machine",
    "load_prompts",
    "measure_forward_costs",
    "prompt_preview",
    "sweep",
    "verify_greedy",
]
