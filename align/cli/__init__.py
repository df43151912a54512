"""The ``align`` command line: ``app`` (the typer app and ``main``), one module per command group.

Layer 3 (orchestration), the top: may import anything in the project; nothing imports it.
"""
