"""dd2vtt metadata encoded once: walls are most of a large state's bytes and never change.

A map's `map_metadata` is replaced whole by `map.set` and never mutated, so its JSON can be
kept per object and spliced into every later encoding of the state (snapshots for the
store, state.sync for GMs) as `msgspec.Raw`. A 90,000-point campaign then encodes in about
a millisecond instead of tens of milliseconds, which would otherwise stall the event loop
while the session's lock is held.
"""

from __future__ import annotations

from msgspec import UNSET, Raw
from msgspec.structs import replace

from app.protocol import CampaignState, MapMetadata, SavedMap, encode


class MetadataCache:
    """Encoded metadata by object identity, for the maps one session holds."""

    def __init__(self) -> None:
        self._entries: dict[int, tuple[MapMetadata, Raw]] = {}

    def pack(self, state: CampaignState) -> CampaignState:
        """A shallow copy of `state` whose metadata are pre-encoded (it encodes identically)."""
        used: set[int] = set()
        packed = replace(state, map_metadata=self._raw(state.map_metadata, used))
        if state.saved_maps is not UNSET and state.saved_maps:
            packed.saved_maps = {
                map_id: self._pack_map(entry, used) for map_id, entry in state.saved_maps.items()
            }
        for stale in self._entries.keys() - used:
            del self._entries[stale]
        return packed

    def _pack_map(self, entry: SavedMap, used: set[int]) -> SavedMap:
        if entry.map_metadata is UNSET:
            return entry
        return replace(entry, map_metadata=self._raw(entry.map_metadata, used))

    def _raw(self, metadata: MapMetadata | object, used: set[int]) -> object:
        if not isinstance(metadata, MapMetadata):
            return metadata
        key = id(metadata)
        used.add(key)
        cached = self._entries.get(key)
        if cached is None or cached[0] is not metadata:
            cached = (metadata, Raw(encode(metadata)))
            self._entries[key] = cached
        return cached[1]
