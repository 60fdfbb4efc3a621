"""Destinations records are delivered to, through the outbox."""

from .base import Sink

__all__ = ["Sink"]
