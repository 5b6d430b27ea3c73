"""The recommender model: collaborative filtering, its popularity baseline, training and evaluation."""

from services.model.popularity import Popularity
from services.model.recommender import Recommender

__all__ = ["Popularity", "Recommender"]
