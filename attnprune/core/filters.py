"""The filters of a channel group's producers, one row per channel.

Methods that score channels by their filters (PAAM's attention input, ABP's and
ASWL's L1 initialisation and ranking) read them here, in the group's root index
space: row ``c`` holds channel ``c``'s filter of every conv/linear producer of the
group, side by side; a producer covering only some of the group's channels leaves
zeros in the other rows. A transposed conv's filters are read along its output
dimension.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .groups import ChannelGroup, Span

__all__ = ["producer_rows", "filter_rows", "filter_l1"]


def producer_rows(span: Span) -> torch.Tensor:
    """One producer's filters of ``span.local`` (in that order), flattened to rows (differentiable)."""
    w = span.module.weight
    if isinstance(span.module, nn.modules.conv._ConvNd) and span.module.transposed:
        w = w.transpose(0, 1)
    return w[span.local].flatten(1)


def filter_rows(group: ChannelGroup) -> torch.Tensor:
    """``(n_channels, row length)``: every producer's filters side by side, in root order.

    Differentiable in the producers' weights, on their device and dtype.
    """
    parts = []
    for span in group.producers:
        rows = producer_rows(span)
        full = rows.new_zeros(group.n_channels, rows.shape[1])
        parts.append(full.index_copy(0, span.root.to(rows.device), rows))
    return torch.cat(parts, dim=1)


@torch.no_grad()
def filter_l1(group: ChannelGroup) -> torch.Tensor:
    """L1 norm of each channel's filters, summed over the group's producers (root order, CPU float)."""
    out = torch.zeros(group.n_channels)
    for span in group.producers:
        out.index_add_(0, span.root, producer_rows(span).detach().abs().sum(1).float().cpu())
    return out
