"""Records as PostgreSQL can keep them (no NUL, no lone surrogate), and a stable name for a record
without a usable id. Pure: staging, the change feeds and the retry job share it."""

from __future__ import annotations

import hashlib

import orjson

from crmsyncd.domain.records import JSON

# Set on a parked copy whose text had to be altered to be stored: the fields concerned.
REPLACED_KEY = "_crmsyncd_replaced"
_REPLACEMENT = "\ufffd"


def anonymous_id(body: JSON) -> str:
    """A stable name for a record that has no usable id, so its error row is not duplicated: the
    same for the record as read and for its parked copy retried."""
    clean = {k: v for k, v in storable(body)[0].items() if k != REPLACED_KEY}
    digest = hashlib.sha256(orjson.dumps(clean, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]
    return f"(no id) {digest}"


def _storable_text(text: str) -> str:
    text = text.replace("\x00", _REPLACEMENT)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = "".join(_REPLACEMENT if 0xD800 <= ord(c) <= 0xDFFF else c for c in text)
    return text


def _storable_value(value: object) -> object:
    if isinstance(value, str):
        return _storable_text(value)
    if isinstance(value, list):
        return [_storable_value(item) for item in value]
    if isinstance(value, dict):
        return {_storable_text(str(k)): _storable_value(v) for k, v in value.items()}
    return value


def storable(body: JSON) -> tuple[JSON, list[str]]:
    """`body` as PostgreSQL can keep it, and the top-level fields whose text had to change."""
    out: JSON = {}
    changed: list[str] = []
    for key, value in body.items():
        clean_key = _storable_text(key)
        clean = _storable_value(value)
        if clean_key != key or clean != value:
            changed.append(clean_key)
        out[clean_key] = clean
    return out, changed
