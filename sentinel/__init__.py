"""sentinel: real-time crypto market alerting over Redis Streams. The CLI lives in ``sentinel.cli``."""

__version__ = "0.1.0"
