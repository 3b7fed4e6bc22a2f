"""The timeline picture of a chaos run: ``timeline.png`` beside the history.

Two panels sharing the time axis (seconds from the run's start): above,
throughput per second (submitted, acknowledged, finished, failed submits);
below, latency (ack p50 and p99, done p99; log scale). Each fault is a
shaded band from its begin to its heal, labelled with its kind and
target, with a dotted line where the cluster was whole again; the end of
the load (start of the drain) is a dashed line.

matplotlib with the Agg backend (no display needed), imported only when a
picture is drawn: ``pip install miyaq[chaos]`` (or the ``test`` extra).
"""
from __future__ import annotations

import logging
import math

from ..errors import ConfigError
from .metrics import Metrics

logger = logging.getLogger(__name__)

COLORS = {"kill": "#d62728", "leader": "#9467bd", "pause": "#ff7f0e", "wipe": "#8c564b", "worker": "#7f7f7f",
          "zk": "#17becf", "partition": "#bcbd22", "isolate": "#e377c2"}


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ConfigError("the timeline picture needs matplotlib: pip install 'miyaq[chaos]'") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def draw(metrics: Metrics, path: str, title: str = "miyaq chaos") -> str:
    """Draw the picture to ``path`` (PNG) and return the path."""
    plt = _pyplot()
    s = metrics.series()
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(14, 7.5), dpi=100,
                                      gridspec_kw={"height_ratios": [3, 2]})
    try:
        top.plot(s["t"], s["submits"], color="#1f77b4", lw=1, label="submitted/s")
        top.plot(s["t"], s["acks"], color="#2ca02c", lw=1, label="acknowledged/s")
        top.plot(s["t"], s["finishes"], color="#000000", lw=1, alpha=0.7, label="finished/s")
        if any(s["fails"]):
            top.plot(s["t"], s["fails"], color="#d62728", lw=1, label="failed submits/s")
        top.set_ylabel("tasks per second")
        top.set_title(title)
        top.grid(alpha=0.3)
        for name, style in (("ack_p50", ("#2ca02c", "-")), ("ack_p99", ("#2ca02c", ":")),
                            ("done_p99", ("#000000", "-"))):
            values = [v if v and not math.isnan(v) and v > 0 else math.nan for v in s[name]]
            bottom.plot(s["t"], values, color=style[0], ls=style[1], lw=1,
                        label=name.replace("_", " ").replace("ack", "ack latency").replace("done", "done latency"))
        bottom.set_yscale("log")
        bottom.set_ylabel("seconds")
        bottom.set_xlabel("seconds since the start of the run")
        bottom.grid(alpha=0.3, which="both")
        _mark_faults(metrics, top, bottom)
        top.legend(loc="upper right", fontsize=8, ncol=2)
        bottom.legend(loc="upper right", fontsize=8, ncol=3)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    logger.info("timeline written to %s", path)
    return path


def _mark_faults(metrics: Metrics, *axes) -> None:
    t0 = metrics.t0
    ymax = axes[0].get_ylim()[1]
    for span in metrics.spans:
        color = COLORS.get(span.kind, "#999999")
        begin = span.begin - t0
        heal = (span.heal or span.begin) - t0
        for ax in axes:
            ax.axvspan(begin, max(heal, begin + 0.3), color=color, alpha=0.18, lw=0)
            if span.recovered:
                ax.axvline(span.recovered - t0, color=color, ls=":", lw=0.8)
        axes[0].text(begin, ymax * 0.98, f"{span.kind} {span.target}", rotation=90, va="top", ha="right",
                     fontsize=7, color=color)
    drain = metrics.phases.get("drain")
    if drain:
        for ax in axes:
            ax.axvline(drain - t0, color="#333333", ls="--", lw=1)
        axes[0].text(drain - t0, ymax * 0.98, " drain", va="top", fontsize=8)
