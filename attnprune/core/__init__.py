"""The core: channel groups, exact gates, analytic cost and the budget search.

Pipeline order: :mod:`.groups` finds torch-pruning's coupled channel groups (the
only module that reads its dependency graph), :mod:`.gates` puts one gate on each,
:mod:`.instrument` owns them and removes closed channels for real, :mod:`.cost`
counts params and MACs of any set of masks analytically, and :mod:`.budget`
turns scores into masks that meet a ratio.
"""

from .budget import BudgetResult, select_channels
from .cost import CostModel
from .groups import ChannelGroup
from .instrument import Instrumented, instrument, outputs_close

__all__ = ["BudgetResult", "select_channels", "CostModel", "ChannelGroup", "Instrumented", "instrument",
           "outputs_close"]
