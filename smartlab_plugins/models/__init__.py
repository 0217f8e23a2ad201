"""Shared training, model cards and safe loading, used by every model plugin."""

from smartlab_plugins.models.cards import ModelCard, ModelIntegrityError

__all__ = ["ModelCard", "ModelIntegrityError"]
