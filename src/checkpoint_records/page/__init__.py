"""The web page of ``checkpoint-records serve``: jobs, loss curves with their checkpoints, each record.

Needs the ``server`` extra (FastAPI, Jinja2); the callback never imports it.
"""

from .routes import page_router

__all__ = ["page_router"]
