"""Benchmark results as ``docs/benchmarks.md`` with PNG plots (matplotlib, drawn off-screen)."""

from __future__ import annotations

import os
import statistics
from pathlib import Path
from typing import Any

from gemma_mtp.benchmarking.compare import ComparisonReport
from gemma_mtp.benchmarking.measure import MachineInfo
from gemma_mtp.benchmarking.sweep import COST_REPEATS, SweepReport

__all__ = ["plot_sweep", "write_markdown"]

SPEEDUP_PLOT = "speedup_vs_draft_length.png"
ACCEPTANCE_PLOT = "acceptance_vs_temperature.png"
POLICY_PLOT = "policy_vs_fixed.png"


def plot_sweep(report: SweepReport, img_dir: Path) -> list[Path]:
    """Speed-up against draft length (measured and modelled, one colour per temperature) and acceptance
    against temperature (one line per draft length)."""
    try:
        import matplotlib
    except ImportError as err:
        raise ImportError('Plots need matplotlib: pip install "gemma-mtp[all]"') from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img_dir.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for color, t in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"], report.temperatures, strict=False):
        for method, style in (("argmax", "o-"), ("sampled", "s:")):
            points = [p for p in report.points if p.temperature == t and p.method == method]
            if not points:
                continue
            ks = [p.draft_length for p in points]
            ax.plot(
                ks, [p.measured_speedup for p in points], style, color=color, label=f"T={t:g} {method} drafts"
            )
            if method == "argmax":
                ax.plot(
                    ks,
                    [p.model_speedup for p in points],
                    "--",
                    color=color,
                    alpha=0.5,
                    label=f"T={t:g} model",
                )
        if t in report.policy:
            ax.axhline(
                report.policy[t].measured_speedup,
                color=color,
                linestyle="-.",
                linewidth=1.2,
                label=f"T={t:g} default policy",
            )
    ax.set_xticks(sorted({p.draft_length for p in report.points}))
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_xlabel("draft length (num_assistant_tokens)")
    ax.set_ylabel("decode speed-up over the target alone")
    ax.set_title(f"{_short(report.model)} on {report.device}")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    speedup = img_dir / SPEEDUP_PLOT
    fig.savefig(speedup, dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    lengths = sorted({p.draft_length for p in report.points})
    cmap = plt.get_cmap("viridis", max(2, len(lengths)))
    for i, k in enumerate(lengths):
        for method, style in (("argmax", "o-"), ("sampled", "s:")):
            points = sorted(
                (p for p in report.points if p.draft_length == k and p.method == method),
                key=lambda p: p.temperature,
            )
            if points:
                ax.plot(
                    [p.temperature for p in points],
                    [p.acceptance_rate for p in points],
                    style,
                    color=cmap(i),
                    label=f"k={k}" if method == "argmax" else None,
                )
    ax.set_xlabel("temperature")
    ax.set_ylabel("acceptance rate (accepted / drafted)")
    ax.set_ylim(0, 1)
    ax.set_title(f"{_short(report.model)}: acceptance vs temperature (dotted: sampled drafts)")
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    acceptance = img_dir / ACCEPTANCE_PLOT
    fig.savefig(acceptance, dpi=110)
    plt.close(fig)
    plots = [speedup, acceptance]
    if report.head_to_head:
        plots.append(_plot_head_to_head(report, img_dir, plt))
    return plots


def _plot_head_to_head(report: SweepReport, img_dir: Path, plt: Any) -> Path:
    """Default policy and best fixed setting against the target alone, per temperature, with run ranges."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    rows = report.head_to_head
    xs = range(len(rows))
    width = 0.38
    for offset, name, values in (
        (-width / 2, "default policy", [h.policy_speedups for h in rows]),
        (width / 2, "best fixed setting", [h.fixed_speedups for h in rows]),
    ):
        medians = [statistics.median(v) for v in values]
        low = [m - min(v) for m, v in zip(medians, values, strict=True)]
        high = [max(v) - m for m, v in zip(medians, values, strict=True)]
        ax.bar([x + offset for x in xs], medians, width, yerr=[low, high], capsize=3, label=name)
    ax.axhline(1.0, color="grey", linewidth=0.8, label="target alone")
    ax.set_xticks(list(xs))
    ax.set_xticklabels([f"T={h.temperature:g}\n({h.best_fixed})" for h in rows])
    ax.set_ylabel("decode speed-up over the target alone")
    ax.set_title(
        f"{_short(report.model)}: default policy vs best fixed\n(median, range over runs)", fontsize=10
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = img_dir / POLICY_PLOT
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _head_to_head_section(report: SweepReport, links: list[str]) -> list[str]:
    if not report.head_to_head:
        return []
    return [
        "## Default draft policy vs the best fixed setting",
        "",
        report.describe_head_to_head() + ". "
        "Each temperature's best fixed setting is the sweep's above (chosen after the fact, so it is the "
        "best of many noisy measurements); each run decodes every prompt with the target alone, the default "
        "policy and that setting back to back, in rotating order, and the ratios are that run's "
        "decode-phase throughputs.",
        "",
        report.format_head_to_head_markdown(),
        "",
        *(f"![{Path(link).stem.replace('_', ' ')}]({link})" for link in links if link.endswith(POLICY_PLOT)),
        "",
    ]


def _short(name: str) -> str:
    parts = Path(name).parts
    return "/".join(parts[-2:]) if len(parts) > 2 else name


def write_markdown(
    path: Path,
    machine: MachineInfo,
    comparison: ComparisonReport,
    sweep_report: SweepReport,
    plots: list[Path],
    command: str,
    note: str = "",
    title: str = "Benchmarks",
) -> None:
    """The whole results page; plot links are relative to ``path``; ``note`` goes under the machine."""
    links = [os.path.relpath(p, path.parent).replace(os.sep, "/") for p in plots]
    mtp = comparison.summary("mtp")
    hf = comparison.summary("hf_assisted")
    lines = [
        f"# {title}",
        "",
        "Generated by `benchmarks/run_benchmarks.py`; rerun it to refresh this page (see the end for the command).",
        "Every figure is a ratio measured in one run on one machine, with the acceptance rate and tokens per target",
        "forward pass next to it. Absolute tokens/s depend on the machine and on whatever else ran on it.",
        "",
        "## Machine",
        "",
        *(f"- {line}" for line in machine.lines()),
        "",
        *([note, ""] if note else []),
        "## Our loop and Hugging Face `generate`, with and without the assistant",
        "",
        comparison.describe() + ".",
        "",
        comparison.format_markdown(),
        "",
        *(f"{line}  " for line in comparison.notes()),
        f"With the assistant our loop decodes **{mtp.speedup_text}** as fast as the target alone, and "
        f"**{mtp.tokens_per_s / hf.tokens_per_s:.2f}×** as fast as transformers' own assisted `generate` with the "
        "same pair and draft length. *same tokens* compares each method's greedy output with our target-only "
        "loop's, prompt by prompt. The Hugging Face rows count forward passes with hooks; their acceptance is "
        "derived from those counts. Peak memory is the whole process's on a CPU (weights, libraries and "
        "interpreter included), the allocator's high-water mark on CUDA.",
        "",
        "## Draft length and temperature (`gemma-mtp tune`)",
        "",
        "The cost model: expected tokens per round `E(k) = 1 + a_1 + … + a_k` from the measured per-position "
        "acceptance `a_i`, over the cost of a round `draft(k) + verify(k+1)` timed in isolation (fastest of "
        f"{COST_REPEATS} repeats in each run), against one plain "
        "decoding step `verify(1)`. *model speed-up* is what the loop would gain if only those forward passes cost "
        "time; *speed-up* is measured (decode phase, our loop with vs without the assistant at the same "
        "temperature). Their gap is the per-round overhead outside the forward passes. `*` marks the best draft "
        "setting. With sampling, an argmax draft is accepted with the target's probability of that token, so its "
        "acceptance falls as temperature flattens the target's distribution; a draft sampled from the assistant "
        "is accepted with `min(1, p/q)`, which holds up better. The model's forward costs are argmax drafting's. "
        "Below each table, the default draft policy (no draft settings: it picks the draft length, 0 included, "
        "and the method each round) measured alongside, unseeded.",
        "",
        f"Forward costs: verify(1) {sweep_report.costs.verify_s[1] * 1000:.2f} ms; "
        + ", ".join(
            f"verify({n}) {s * 1000:.2f} ms" for n, s in sorted(sweep_report.costs.verify_s.items()) if n > 1
        )
        + "; "
        + ", ".join(f"draft({k}) {s * 1000:.2f} ms" for k, s in sorted(sweep_report.costs.draft_s.items()))
        + ".",
        "",
        sweep_report.format_markdown(),
        "",
        *(
            f"![{Path(link).stem.replace('_', ' ')}]({link})"
            for link in links
            if not link.endswith(POLICY_PLOT)
        ),
        "",
        *_head_to_head_section(sweep_report, links),
        "## Reproduce",
        "",
        "```bash",
        command,
        "```",
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="utf-8")


def section_markers(name: str) -> tuple[str, str]:
    """The HTML comments that delimit a section another script writes into a results page."""
    return f"<!-- {name} -->", f"<!-- /{name} -->"


def page_section(page: str, name: str) -> str | None:
    """The section ``name`` of a page, markers included (``None`` when it has none)."""
    begin, end = section_markers(name)
    if begin not in page or end not in page:
        return None
    return page[page.index(begin) : page.index(end) + len(end)]


def write_page_section(path: Path, name: str, text: str) -> None:
    """Replace the section ``name`` of the page at ``path`` with ``text`` (markers included), or add it before
    the page's "Reproduce" section."""
    page = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    current = page_section(page, name)
    if current is not None:
        page = page.replace(current, text)
    else:
        marker = "\n## Reproduce"
        at = page.index(marker) if marker in page else len(page)
        page = page[:at].rstrip("\n") + "\n\n" + text + "\n" + page[at:]
    path.write_text(page, encoding="utf-8")
