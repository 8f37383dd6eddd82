"""Data: offline preparation of token shards (`shards`), their manifest (`manifest`), and streaming (`stream`)."""

from ds_distil.data.manifest import Manifest, load_manifest
from ds_distil.data.stream import MLMStream, StreamPosition

__all__ = ["Manifest", "load_manifest", "MLMStream", "StreamPosition"]
