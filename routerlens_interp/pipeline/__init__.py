"""The whole method end to end (``routerlens run`` / ``demo``), its report, the paper's numbers, ``make figures``."""
