"""agegate: age estimation at the till for Challenge 25 sales of restricted items.

The code lives in three parts, each its own folder at the top of the repository:
``edge/`` (the till daemon, ``agegate.edge``), ``training/`` (``agegate.training``)
and ``export/`` (``agegate.export``).
"""

__version__ = "0.2.0"
