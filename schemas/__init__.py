"""The modelwatch contract: event schemas, their codec, the topic table and the error tree."""

from schemas.codec import EVENTS, Codec, codec, load_example, load_schema
from schemas.errors import ContractError, ModelwatchError

__all__ = ["EVENTS", "Codec", "ContractError", "ModelwatchError", "codec", "load_example", "load_schema"]
