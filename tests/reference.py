"""Reference models the tests compare the real code against: simple, obviously right."""

from __future__ import annotations


def ref_match(pattern: str, name: str) -> bool:
    """NATS matching, token by token, plus the rule that a leading wildcard does not see
    names whose first token starts with '$'."""
    pat, toks = pattern.split("."), name.split(".")
    if toks[0].startswith("$") and pat[0] in ("*", ">"):
        return False
    for i, p in enumerate(pat):
        if p == ">":
            return len(toks) > i
        if i >= len(toks) or (p != "*" and p != toks[i]):
            return False
    return len(pat) == len(toks)
