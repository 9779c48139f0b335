"""Content negotiation on the Accept header (RFC 9110 §12.5.1), for the resolver's representations.

`choose(accept, offers)` picks the offer the client prefers: the highest quality, then the offer a media range
names exactly (or by `type/*`) over one only `*/*` admits, then the server's order of `offers`. An absent header
accepts anything (the first offer); an offer nothing accepts (q=0, or no range matches) is never chosen.
"""

from __future__ import annotations

from collections.abc import Sequence


def _ranges(accept: str) -> list[tuple[str, float]]:
    out = []
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        if not media or "/" not in media:
            continue
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = min(max(float(value), 0.0), 1.0)
                except ValueError:
                    q = 0.0
        out.append((media.lower(), q))
    return out


def _quality(offer: str, ranges: list[tuple[str, float]]) -> tuple[float, int]:
    """(quality, specificity) of an offer: the most specific range that matches it decides (2 exact, 1 type/*)."""
    kind = offer.split("/")[0]
    best: tuple[int, float] | None = None
    for media, q in ranges:
        if media == offer:
            level = 2
        elif media == f"{kind}/*":
            level = 1
        elif media == "*/*":
            level = 0
        else:
            continue
        if best is None or level > best[0]:
            best = (level, q)
    return (0.0, 0) if best is None else (best[1], best[0])


def choose(accept: str | None, offers: Sequence[str]) -> str | None:
    """The offer to answer with, or None when the header accepts none of them."""
    if not accept or not accept.strip():
        return offers[0]
    ranges = _ranges(accept)
    if not ranges:
        return offers[0]
    scored = [(*_quality(offer, ranges), -i, offer) for i, offer in enumerate(offers)]
    q, _, _, offer = max(scored)
    return offer if q > 0 else None
