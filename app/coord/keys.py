"""Every Redis key, in one place. A campaign's keys share its {hash tag}, so each script
touches one slot; the node lease is the one key outside it."""

from __future__ import annotations


def node(node_id: str) -> str:
    """A machine's lease: its incarnation, with a TTL."""
    return f"vtt:node:{node_id}"


def claim(campaign_id: str) -> str:
    """`node|incarnation|fence|url` of the campaign's owner; no TTL (valid while its lease is)."""
    return f"vtt:{{{campaign_id}}}:claim"


def fence(campaign_id: str) -> str:
    """The campaign's fence counter (INCR per claim); no TTL."""
    return f"vtt:{{{campaign_id}}}:fence"


def log(campaign_id: str) -> str:
    """The campaign's op log, a Stream whose entry ids are `<last seq>-0`."""
    return f"vtt:{{{campaign_id}}}:log"


def epoch(campaign_id: str) -> str:
    """The epoch the campaign's clients hold, kept across owners while the log is whole."""
    return f"vtt:{{{campaign_id}}}:epoch"


def claim_value(node_id: str, incarnation: str, fence_value: int, url: str) -> str:
    """What the claim key holds."""
    return f"{node_id}|{incarnation}|{fence_value}|{url}"
