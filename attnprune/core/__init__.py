"""The core: channel groups, exact gates, analytic cost and the budget search.

Pipeline order: :mod:`.groups` finds torch-pruning's coupled channel groups (the
only module that changes its dependency graph; :mod:`.scale_flow` also reads it, to
follow a group's per-channel scale downstream), :mod:`.gates` puts one gate on each,
:mod:`.instrument` owns them and removes closed channels for real, :mod:`.cost`
counts params and MACs of any set of masks analytically, and :mod:`.budget`
turns scores into masks that meet a ratio (with the shared rounding, tolerance,
ramp and reachability steps); :mod:`.filters` reads a group's producer filters.
Methods use these public names only.
"""

from .budget import (
    TARGETS,
    BudgetResult,
    check_reachable,
    ramp,
    reachable_ratio,
    round_kept,
    round_step,
    select_channels,
    tolerance,
)
from .cost import CostModel
from .filters import filter_l1, filter_rows
from .groups import ChannelGroup
from .instrument import Instrumented, instrument, outputs_close
from .scale_flow import ScaleFlow, gate_spans, scale_flow

__all__ = ["TARGETS", "BudgetResult", "select_channels", "check_reachable", "reachable_ratio", "ramp",
           "round_kept", "round_step", "tolerance", "CostModel", "filter_l1", "filter_rows", "ChannelGroup",
           "Instrumented", "instrument", "outputs_close", "ScaleFlow", "scale_flow", "gate_spans"]
