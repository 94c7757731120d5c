"""Pre-encoded metadata changes nothing on the wire and is encoded once per map."""

from __future__ import annotations

from msgspec import Raw

from app.metacache import MetadataCache
from app.protocol import (
    CampaignState,
    FogZone,
    Light,
    MapMetadata,
    Point,
    SavedMap,
    Token,
    encode,
)


def metadata(offset: float) -> MapMetadata:
    walls = [[Point(x=offset + i, y=j * 0.5) for j in range(5)] for i in range(4)]
    return MapMetadata(walls=walls, lights=[Light(position=Point(x=1, y=2), color="ffeedd")])


def state_with_maps() -> CampaignState:
    token = Token(token_id="t1", name="Aria", x=1, y=2, width=1, height=1, visible=True)
    crypt = SavedMap(
        name="Crypt",
        image_url="https://cdn.example/crypt.webp",
        grid_size=70,
        width=1400,
        height=1120,
        tokens={"t1": token},
        fog_zones=[FogZone(x=0, y=0, w=1, h=1, visible=True)],
        map_metadata=metadata(100),
    )
    plain = SavedMap("Plain", "https://cdn.example/p.webp", 64, 10, 10)
    return CampaignState(
        campaign_id="c1",
        map_id="m1",
        map_url="https://cdn.example/m1.webp",
        tokens={"t1": token},
        map_metadata=metadata(0),
        saved_maps={"crypt": crypt, "plain": plain},
    )


def test_a_packed_state_encodes_to_the_same_bytes() -> None:
    state = state_with_maps()
    assert encode(MetadataCache().pack(state)) == encode(state)


def test_packing_leaves_the_live_state_untouched() -> None:
    state = state_with_maps()
    before = encode(state)
    MetadataCache().pack(state)
    assert isinstance(state.map_metadata, MapMetadata)
    assert encode(state) == before


def test_each_metadata_is_encoded_once_until_it_is_replaced() -> None:
    cache = MetadataCache()
    state = state_with_maps()
    first: object = cache.pack(state).map_metadata
    assert isinstance(first, Raw)
    again: object = cache.pack(state).map_metadata
    assert again is first
    state.map_metadata = metadata(5)
    replaced: object = cache.pack(state).map_metadata
    assert replaced is not first
    assert isinstance(replaced, Raw)
    assert bytes(replaced) == encode(metadata(5))


def test_metadata_no_longer_in_the_state_is_forgotten() -> None:
    cache = MetadataCache()
    state = state_with_maps()
    cache.pack(state)
    assert len(cache._entries) == 2
    state.saved_maps = {}
    cache.pack(state)
    assert len(cache._entries) == 1
