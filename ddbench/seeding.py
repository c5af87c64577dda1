"""Named, hashed seeds: every random stream in ddbench derives from the suite seed this way.

`derive_seed(0, "job", job_id, "init")` hashes its parts with SHA-256, so a stream depends only
on its name and never on the clock, on import order or on how many other streams were drawn.
"""

from __future__ import annotations

import hashlib


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from the repr of `parts` (stable across runs, machines and Python versions)."""
    text = "\x1f".join(repr(p) for p in parts)
    digest = hashlib.sha256(text.encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def content_hash(payload: str, length: int = 16) -> str:
    """A short hex digest used for job ids and cell ids."""
    return hashlib.sha256(payload.encode()).hexdigest()[:length]
