"""Models: the protocol every served model implements, the built-in recommender (one implementation),
its popularity baseline, training, evaluation, and registering a model of one's own."""

from services.model.popularity import Popularity
from services.model.protocol import Model, ModelBase, default_select
from services.model.recommender import Recommender

__all__ = ["Model", "ModelBase", "Popularity", "Recommender", "default_select"]
