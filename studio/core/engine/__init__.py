"""The training engine: a job that runs a recipe in its own process (`EngineRunner`)."""

from studio.core.engine.runner import EngineRunner

__all__ = ["EngineRunner"]
