"""The figures as PNG files (matplotlib, Agg backend: no display needed).

One function per figure; each returns the file name it wrote, or None when the run has
no data for it (a crashed phase), so the report simply leaves that picture out.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Final

import matplotlib

matplotlib.use("Agg")  # before pyplot: render to files only

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ._report import (
    BASELINE,
    HEADLINE,
    latency_runs,
    peer_runs,
    request_runs,
    scaling_points,
    sweep_rate,
)
from ._sizes import MAIN_LATENCY, SWEEP_LATENCIES, ZERO_LATENCY
from ._suite import MATRIX, STREAM, Results

SIZE: Final = (8.0, 4.5)
DPI: Final = 110
CIO: Final = "#1f6feb"
OTHER: Final = "#8b949e"
RAW: Final = "#2da44e"


def _colour(client: str) -> str:
    if client.startswith("cio-queue"):
        return CIO
    if client.startswith("raw"):
        return RAW
    return OTHER


def _save(fig: Figure, output: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(output / name, dpi=DPI)
    plt.close(fig)
    return name


def _barh(ax: Axes, labels: list[str], values: list[float], colours: list[str],
          fmt: str) -> None:
    positions = range(len(labels))
    bars = ax.barh(list(positions), values, color=colours)
    ax.set_yticks(list(positions), labels)
    ax.invert_yaxis()
    for bar, value in zip(bars, values, strict=True):
        ax.annotate(format(value, fmt), (bar.get_width(), bar.get_y() + bar.get_height() / 2),
                    xytext=(3, 0), textcoords="offset points", va="center", fontsize=8)


def fig_enqueue(results: Results, output: Path) -> str | None:
    if not results.enqueue:
        return None
    paths = list(results.enqueue.values())
    fig, ax = plt.subplots(figsize=SIZE)
    _barh(ax, [p.label for p in paths], [p.median_ns / 1000 for p in paths],
          [CIO if "EventQueue" in p.label else RAW if "raw" in p.label else OTHER
           for p in paths], ".2f")
    ax.set_xlabel("µs of CPU per call (median)")
    ax.set_title("1. Enqueue CPU per call")
    return _save(fig, output, "fig01-enqueue-cpu.png")


def fig_throughput(results: Results, output: Path) -> str | None:
    latencies = (MAIN_LATENCY, ZERO_LATENCY)
    clients = results.clients(MATRIX)
    if not clients:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11.0, 4.5), sharey=True)
    for ax, latency in zip(axes, latencies, strict=True):
        values = []
        for client in clients:
            run = results.one(MATRIX, client, latency)
            values.append(run.ops_per_second if run else 0.0)
        _barh(ax, clients, values, [_colour(c) for c in clients], ",.0f")
        ax.set_xscale("log")
        ax.set_xlabel("operations delivered per second (log)")
        ax.set_title(f"2. Throughput at {latency * 1000:g} ms")
    return _save(fig, output, "fig02-throughput.png")


def fig_memory(results: Results, output: Path) -> str | None:
    if not results.memory:
        return None
    fig, ax = plt.subplots(figsize=SIZE)
    names = [f.transport for f in results.memory]
    x = range(len(names))
    width = 0.27
    ax.bar([i - width for i in x], [f.bytes_per_op for f in results.memory], width,
           label="heap per queued op", color=CIO)
    ax.bar(list(x), [f.budget for f in results.memory], width,
           label="budget: 2 x JSON + 300 B", color=RAW)
    ax.bar([i + width for i in x], [f.json_bytes for f in results.memory], width,
           label="op JSON", color=OTHER)
    ax.set_xticks(list(x), names)
    ax.set_ylabel("bytes per operation")
    ax.set_title("3. Memory per queued operation (hung server)")
    ax.legend()
    return _save(fig, output, "fig03-memory.png")


def fig_scaling(results: Results, output: Path) -> str | None:
    points = scaling_points(results)
    if not points:
        return None
    fig, ax = plt.subplots(figsize=SIZE)
    _barh(ax, [f"{ops:,} ops" for ops, _, _ in points], [cpu for _, cpu, _ in points],
          [CIO] * len(points), ".1f")
    ax.set_xlabel("µs of client CPU per operation")
    ax.set_title(f"4. CPU per operation against volume ({HEADLINE}, 0 ms)")
    return _save(fig, output, "fig04-cpu-scaling.png")


def fig_stream(results: Results, output: Path) -> str | None:
    runs = [r for r in results.runs if r.group == STREAM]
    if not runs:
        return None
    fig, ax = plt.subplots(figsize=SIZE)
    _barh(ax, [f"{r.server_error:.0%} of requests 5xx" for r in runs],
          [r.ops_per_second for r in runs], [CIO] * len(runs), ",.0f")
    ax.set_xlabel("operations delivered per second")
    ax.set_title(f"5. A sustained stream, clean and through 5xx ({MAIN_LATENCY * 1000:g} ms)")
    return _save(fig, output, "fig05-stream-faults.png")


def fig_latency(results: Results, output: Path) -> str | None:
    runs = latency_runs(results)
    if not runs:
        return None
    fig, ax = plt.subplots(figsize=SIZE)
    labels = [r.client for r in runs]
    x = range(len(labels))
    ax.bar([i - 0.2 for i in x], [r.outcome.extra["p50_us"] for r in runs], 0.4, label="p50",
           color=CIO)
    ax.bar([i + 0.2 for i in x], [r.outcome.extra["p99_us"] for r in runs], 0.4, label="p99",
           color=OTHER)
    ax.set_xticks(list(x), labels, rotation=20, ha="right", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("µs per enqueue call, wall (log)")
    ax.set_title(f"6. Handler-side enqueue latency at {MAIN_LATENCY * 1000:g} ms")
    ax.legend()
    return _save(fig, output, "fig06-enqueue-latency.png")


def fig_requests(results: Results, output: Path) -> str | None:
    runs = request_runs(results)
    if not runs:
        return None
    fig, ax = plt.subplots(figsize=SIZE)
    _barh(ax, [r.client for r in runs], [r.requests_per_10k for r in runs],
          [_colour(r.client) for r in runs], ",.0f")
    ax.set_xscale("log")
    ax.set_xlabel("HTTP requests per 10,000 operations (log)")
    ax.set_title("7. Requests per 10,000 operations")
    return _save(fig, output, "fig07-requests.png")


def fig_aclose(results: Results, output: Path) -> str | None:
    if not results.aclose:
        return None
    fig, ax = plt.subplots(figsize=SIZE)
    labels = [f"{f.transport}, {'dead-letter file' if f.dead_letter else 'no file'}"
              for f in results.aclose]
    _barh(ax, labels, [f.seconds for f in results.aclose], [CIO] * len(labels), ".2f")
    ax.axvline(results.aclose[0].deadline, color=OTHER, linestyle="--",
               label="shutdown_timeout")
    ax.set_xlabel(f"seconds in aclose() with {results.aclose[0].pending:,} pending")
    ax.set_title("8. aclose() behind a hung server")
    ax.legend()
    return _save(fig, output, "fig08-aclose.png")


def fig_sweep(results: Results, output: Path) -> str | None:
    fig, ax = plt.subplots(figsize=SIZE)
    plotted = False
    for client, colour in ((HEADLINE, CIO), (BASELINE, RAW)):
        points = [(lat * 1000, sweep_rate(results, client, lat)) for lat in SWEEP_LATENCIES]
        xs = [x for x, y in points if y is not None]
        ys = [y for _, y in points if y is not None]
        if xs:
            ax.plot(xs, ys, marker="o", color=colour, label=client)
            plotted = True
    if not plotted:
        plt.close(fig)
        return None
    ax.set_xlabel("server latency (ms)")
    ax.set_ylabel("operations delivered per second")
    ax.set_title("9. Throughput against latency")
    ax.legend()
    return _save(fig, output, "fig09-latency-sweep.png")


def fig_peers(results: Results, output: Path) -> str | None:
    runs = peer_runs(results)
    if not runs:
        return None
    fig, ax = plt.subplots(figsize=(9.0, 5.5))
    _barh(ax, [r.client for r in runs], [r.ops_per_second for r in runs],
          [_colour(r.client) for r in runs], ",.0f")
    ax.set_xscale("log")
    ax.set_xlabel("events delivered per second (log)")
    ax.set_title(f"10. Side by side at {MAIN_LATENCY * 1000:g} ms")
    return _save(fig, output, "fig10-peers.png")


FIGURES: Final[dict[int, Callable[[Results, Path], str | None]]] = {
    1: fig_enqueue, 2: fig_throughput, 3: fig_memory, 4: fig_scaling, 5: fig_stream,
    6: fig_latency, 7: fig_requests, 8: fig_aclose, 9: fig_sweep, 10: fig_peers,
}


def draw_all(results: Results, output: Path) -> dict[int, str]:
    """Write every figure that has data; return figure number -> file name."""
    written = {}
    for number, draw in FIGURES.items():
        name = draw(results, output)
        if name is not None:
            written[number] = name
    return written
