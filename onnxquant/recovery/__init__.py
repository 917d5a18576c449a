"""Accuracy recovery: passes that change weights (not the graph's shape) so int8 stays close to fp32.

Data-free ones run before calibration (``equalize``), data-driven ones either before
calibration (``smoothquant``: it changes activation ranges) or after the plan is made
(``adaround``, ``bias_correction``: they need the final scales).
"""
