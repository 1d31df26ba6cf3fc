"""tickmesh wire contract: topics, messages, codec and error codes. A leaf package."""
from . import topics
from .codec import (MAJOR, MAX_FRAME, MINOR, Encoder, Envelope, decode, encode, envelope_to_plain,
                    record_from_plain, to_plain)
from .errors import Code, DecodeError, EncodeError, ProtocolError
from .messages import *  # noqa: F401,F403  (every message type)
from .messages import REGISTRY

__all__ = ["topics", "MAJOR", "MINOR", "MAX_FRAME", "Encoder", "Envelope", "decode", "encode",
           "envelope_to_plain", "record_from_plain", "to_plain", "Code", "DecodeError",
           "EncodeError", "ProtocolError", "REGISTRY"] + [c.__name__ for c in REGISTRY.values()]
