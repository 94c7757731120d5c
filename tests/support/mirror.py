"""A client-side mirror of a campaign: the state a client rebuilds from the frames it received."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

from app.protocol import MESSAGES

# Frames that carry no seq change nothing a client mirrors (replies, state.saved).
REPLIES = frozenset(tag for tag, row in MESSAGES.server.items() if not row.numbered)


class MirrorError(AssertionError):
    """A frame that no correct server could have sent to this client in this state."""


class Mirror:
    """Applies server frames to a plain dict state, as a careful client would.

    `state` has the shape of a `state.sync` payload; `maps` is the last `map.list` payload;
    `seqs` lists the seq of every numbered frame since the last `state.sync`; `resumes` keeps
    every `state.resume` payload. A GM's mirror (its state has `saved_maps`) also keeps the map
    library the way PROTOCOL.md describes it, so it can be compared with a fresh GM's state.sync.
    """

    def __init__(self) -> None:
        self.state: dict[str, Any] = {}
        self.maps: dict[str, Any] | None = None
        self.seqs: list[int] = []
        self.resumes: list[dict[str, Any]] = []

    @classmethod
    def of(cls, frames: Iterable[dict[str, Any]]) -> Mirror:
        """A mirror that has applied `frames` in order."""
        mirror = cls()
        for frame in frames:
            mirror.apply(frame)
        return mirror

    @property
    def seq(self) -> int:
        """The highest seq this mirror reflects."""
        return int(self.state.get("seq", 0))

    @property
    def tokens(self) -> dict[str, Any]:
        """The tokens of the active map."""
        tokens: dict[str, Any] = self.state.get("tokens", {})
        return tokens

    def apply(self, frame: dict[str, Any]) -> None:
        """Apply one decoded server frame."""
        kind = frame["type"]
        payload: dict[str, Any] = copy.deepcopy(frame.get("payload") or {})
        if kind in REPLIES:
            return
        if kind == "state.sync":
            self.state = payload
            self.seqs = []
            return
        if kind == "state.resume":
            self.resumes.append(payload)
            return
        if not self.state:
            raise MirrorError(f"{kind} arrived before any state.sync: {frame}")
        handler = getattr(self, "_" + kind.replace(".", "_"), None)
        if handler is None:
            raise MirrorError(f"unknown server frame type {kind!r}: {frame}")
        handler(payload)
        seq = frame.get("seq")
        if seq is not None:
            self.seqs.append(seq)
            self.state["seq"] = max(self.seq, seq)

    # --- tokens ----------------------------------------------------------------------------------

    def _known(self, token_id: str, kind: str) -> dict[str, Any]:
        token: dict[str, Any] | None = self.tokens.get(token_id)
        if token is None:
            raise MirrorError(f"{kind} for token {token_id!r}, which this client does not have")
        return token

    def _token_add(self, payload: dict[str, Any]) -> None:
        self.tokens[payload["token_id"]] = payload

    def _token_move(self, payload: dict[str, Any]) -> None:
        token = self._known(payload["token_id"], "token.move")
        token["x"], token["y"] = payload["x"], payload["y"]

    def _token_update(self, payload: dict[str, Any]) -> None:
        token = self._known(payload["token_id"], "token.update")
        token.update({key: value for key, value in payload.items() if key != "token_id"})

    def _token_remove(self, payload: dict[str, Any]) -> None:
        self._known(payload["token_id"], "token.remove")
        del self.tokens[payload["token_id"]]

    # --- scene -----------------------------------------------------------------------------------

    def _fog_update(self, payload: dict[str, Any]) -> None:
        self.state["fog_zones"] = payload["zones"]

    def _scene_darkness(self, payload: dict[str, Any]) -> None:
        self.state["darkness_level"] = payload["darkness_level"]

    # --- maps ------------------------------------------------------------------------------------

    def _map_set(self, payload: dict[str, Any]) -> None:
        """A new map: the active one goes to the library, the new one is active and empty."""
        state = self.state
        library = state.get("saved_maps")
        if library is not None:
            self._store_active(library)
            library[payload["map_id"]] = _saved_map(payload)
        state["map_id"] = payload["map_id"]
        state["map_url"] = payload["image_url"]
        state["grid_size"] = payload["grid_size"]
        state["map_width"] = payload["width"]
        state["map_height"] = payload["height"]
        if "map_metadata" in payload:
            state["map_metadata"] = payload["map_metadata"]
        else:
            state.pop("map_metadata", None)
        state["tokens"] = {}
        state["fog_zones"] = []

    def _store_active(self, library: dict[str, Any]) -> None:
        state = self.state
        if "map_id" not in state or "map_url" not in state:
            return
        current = library.get(state["map_id"])
        name = current["name"] if current is not None else f"Map {len(library) + 1}"
        stored = {
            "name": name,
            "image_url": state["map_url"],
            "grid_size": state["grid_size"],
            "width": state["map_width"] or 1,
            "height": state["map_height"] or 1,
            "tokens": state["tokens"],
            "fog_zones": state["fog_zones"],
        }
        if "map_metadata" in state:
            stored["map_metadata"] = state["map_metadata"]
        library[state["map_id"]] = stored

    def _map_list(self, payload: dict[str, Any]) -> None:
        """The library's names and membership; a GM's mirror follows renames and deletions."""
        self.maps = payload
        library = self.state.get("saved_maps")
        if library is None:
            return
        listed = {entry["map_id"]: entry for entry in payload["maps"]}
        for map_id in [map_id for map_id in library if map_id not in listed]:
            del library[map_id]
        for map_id, entry in listed.items():
            if map_id not in library:
                raise MirrorError(f"map.list names {map_id!r}, which this GM's library lacks")
            library[map_id]["name"] = entry["name"]
            library[map_id]["image_url"] = entry["image_url"]


def _saved_map(payload: dict[str, Any]) -> dict[str, Any]:
    """A library entry for a just-set map: while it is active its tokens live in the state."""
    entry = {
        "name": payload["name"],
        "image_url": payload["image_url"],
        "grid_size": payload["grid_size"],
        "width": payload["width"],
        "height": payload["height"],
        "tokens": {},
        "fog_zones": [],
    }
    if "map_metadata" in payload:
        entry["map_metadata"] = payload["map_metadata"]
    return entry
