"""What a token may publish, request and subscribe to. Pure.

Owns: the ``Permissions`` value a token maps to (parsed from a legacy list of words or
a NATS-style mapping), the rules of the reserved areas, the pattern algebra those rules
need (``matches``, ``subsumes``, ``intersects``, all honouring the routing rule that a
leading wildcard never catches a name whose first token starts with ``$``), and the
per-session cached check of the publish hot path (``PublishCheck``).

Must not touch: sessions, sockets, the auth backends (treescale/auth.py parses what they
return with ``parse``), the wire (treescale/brokers/gate.py turns a ``Denial`` into an
ERROR).

What a token may hold::

    ["*"]                      everything (links and the node's own services too)
    ["pub", "sub", "exec"]     words: "pub" publishes any ordinary name, "sub" subscribes
                               any ordinary pattern, "sys" the $sys area, any other word
                               names a service ($svc.WORD…)
    {publish = {allow = [...], deny = [...]},   (or a plain list: the allow list)
     subscribe = {allow = [...], deny = [...]},
     services = ["exec", "sys"]}                ("*" there: every service and sys)

In a mapping an absent ``publish``/``subscribe`` (or an absent ``allow``) allows every
ordinary name, as NATS does; deny always wins. Reserved areas ignore allow lists and
need a grant: publishing or requesting ``$svc.S…`` needs service ``S``; subscribing to a
pattern that can match ``$svc.S…`` needs ``S`` (``$svc.>`` or ``$svc.*.N`` can match
every service, so they need them all); ``$sys.…`` needs ``sys``. Nobody subscribes to an
``$inbox`` pattern (the node subscribes each client to its own) and no token but ``*``
publishes one: replies go as REPLY, whose subject carries the node's capability.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from treescale import subjects
from treescale.routing import WILDCARD_ONE, WILDCARD_REST, PatternError, split_pattern

__all__ = ["ALL", "NONE", "Denial", "Permissions", "PublishCheck", "Rules", "intersects",
           "matches", "parse", "parse_tokens", "subsumes"]

PUB_WORD = "pub"
SUB_WORD = "sub"
EVERYTHING_WORD = "*"
ORDINARY = ((WILDCARD_REST,),)  # what "pub"/"sub" (or an absent allow) allows
CACHE_SIZE = 4096  # names remembered per session by PublishCheck
_WILD = (WILDCARD_ONE, WILDCARD_REST)
_MAPPING_KEYS = ("publish", "subscribe", "services")
_RULE_KEYS = ("allow", "deny")
_RESERVED_FIRST = (subjects.SVC, subjects.SYS, subjects.INBOX)
_SHOWN = 5  # allow patterns quoted in a refusal


class Denial(NamedTuple):
    """Why something was refused: an error code and a message naming the rule."""

    code: str
    message: str


# ------------------------------------------------------------- pattern algebra
# Patterns are token tuples (routing.split_pattern); names are patterns without
# wildcards. A name's first token starting with "$" is matched only by that very token.


def _dollar(tok: str) -> bool:
    return tok.startswith("$")


def matches(pattern: tuple[str, ...], name: tuple[str, ...]) -> bool:
    """Does ``pattern`` match the name ``name`` (both token tuples)?"""
    if name and _dollar(name[0]) and (not pattern or pattern[0] != name[0]):
        return False
    for i, tok in enumerate(pattern):
        if tok == WILDCARD_REST:
            return i < len(name)
        if i >= len(name) or (tok != WILDCARD_ONE and tok != name[i]):
            return False
    return len(pattern) == len(name)


def subsumes(general: tuple[str, ...], specific: tuple[str, ...]) -> bool:
    """Is every name ``specific`` matches also matched by ``general``?"""
    for i, tok in enumerate(general):
        if tok == WILDCARD_REST:
            if i >= len(specific):
                return False
            return not (i == 0 and _dollar(specific[0]))
        if i >= len(specific):
            return False
        spec = specific[i]
        if spec == WILDCARD_REST:
            return False
        if tok == WILDCARD_ONE:
            if i == 0 and _dollar(spec):
                return False
        elif tok != spec:
            return False
    return len(general) == len(specific)


def _token_meets(a: str, b: str, first: bool) -> bool:
    """Can one token be matched by both ``a`` and ``b`` (neither ``>``)?"""
    if a == WILDCARD_ONE and b == WILDCARD_ONE:
        return True
    if a == WILDCARD_ONE or b == WILDCARD_ONE:
        literal = b if a == WILDCARD_ONE else a
        return not (first and _dollar(literal))
    return a == b


def intersects(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """Is there a name both patterns match?"""
    for i in range(max(len(a), len(b))):
        ta = a[i] if i < len(a) else None
        tb = b[i] if i < len(b) else None
        if ta is None or tb is None:
            return False
        if ta == WILDCARD_REST or tb == WILDCARD_REST:
            other = tb if ta == WILDCARD_REST else ta
            return not (i == 0 and other not in _WILD and _dollar(other))
        if not _token_meets(ta, tb, i == 0):
            return False
    return True


# ------------------------------------------------------------------ the value


@dataclass(frozen=True)
class Rules:
    """Allow and deny patterns of one direction (publish or subscribe)."""

    allow: tuple[tuple[str, ...], ...] = ()
    deny: tuple[tuple[str, ...], ...] = ()

    def denied_by(self, hit: Any) -> str | None:
        """The first deny pattern ``hit(pattern)`` says applies, spelled out."""
        for pattern in self.deny:
            if hit(pattern):
                return ".".join(pattern)
        return None

    def allow_text(self) -> str:
        shown = [".".join(p) for p in self.allow[:_SHOWN]]
        more = len(self.allow) - len(shown)
        return ", ".join(shown) + (f" and {more} more" if more > 0 else "") \
            if shown else "none"


@dataclass(frozen=True)
class Permissions:
    """What one token may do (see the module docstring). Compare by value."""

    everything: bool = False
    publish: Rules = field(default_factory=Rules)
    subscribe: Rules = field(default_factory=Rules)
    services: frozenset[str] = frozenset()  # may hold "*" (every service)
    sys: bool = False

    def has_service(self, service: str) -> bool:
        return EVERYTHING_WORD in self.services or service in self.services

    def _reserved(self, tokens: tuple[str, ...], what: str) -> Denial | None:
        """The grant a ``$svc``/``$sys`` name or pattern needs, if missing."""
        if tokens[0] == subjects.SYS:
            if self.sys:
                return None
            return _denied(tokens, f"this client's token does not allow "
                           f"{subjects.SYS_PERMISSION}", what)
        service = tokens[1] if len(tokens) > 1 else WILDCARD_REST
        if service in _WILD:
            if EVERYTHING_WORD in self.services:
                return None
            return _denied(tokens, "can match every service's requests: this client's "
                           "token does not allow them all (it needs '*')", what)
        if self.has_service(service):
            return None
        return _denied(tokens, f"this client's token does not allow {service}", what)

    def why_not_publish(self, name: str) -> Denial | None:
        """None if the token may publish ``name``, else why not. A service is only
        ever asked by a request (its node stamps the requester's permissions on it):
        a publish there could carry forged ones."""
        refused = self._why_not_send(name, "publish")
        if refused is None and not self.everything and \
                name.split(".", 1)[0] == subjects.SVC:
            return _denied(tuple(name.split(".")), "services take requests, not "
                           "publishes", "publish")
        return refused

    def _why_not_send(self, name: str, what: str) -> Denial | None:
        if self.everything:
            return None
        tokens = tuple(name.split("."))
        first = tokens[0]
        if first == subjects.INBOX:
            return _denied(tokens, "an inbox takes replies only (send a reply)", what)
        if first in _RESERVED_FIRST:
            refused = self._reserved(tokens, what)
            if refused is not None:
                return refused
        elif not any(matches(p, tokens) for p in self.publish.allow):
            return _denied(tokens, "not in this token's publish allow list "
                           f"({self.publish.allow_text()})", what)
        rule = self.publish.denied_by(lambda p: matches(p, tokens))
        return None if rule is None else _denied(tokens, f"denied by rule deny {rule!r}",
                                                 what)

    def why_not_request(self, name: str) -> Denial | None:
        """A request is a publish that wants replies; nobody requests an inbox."""
        if name.split(".", 1)[0] == subjects.INBOX:
            return _denied((name,), "an inbox takes replies only (send a reply)",
                           "request")
        return self._why_not_send(name, "publish")

    def words(self) -> list[str]:
        """The grants a service is told about (its node stamps them on a request):
        ``["*"]`` for everything, else the services and ``sys``."""
        if self.everything:
            return [EVERYTHING_WORD]
        return sorted(self.services | ({subjects.SYS_PERMISSION} if self.sys else set()))

    def why_not_subscribe(self, pattern: str) -> Denial | None:
        """None if the token may subscribe ``pattern``, else why not."""
        tokens = tuple(pattern.split("."))
        first = tokens[0]
        if first == subjects.INBOX:
            return Denial(subjects.BAD_PATTERN, f"pattern {pattern!r}: inboxes are "
                          "private (the node subscribes each client to its own)")
        if self.everything:
            return None
        if first in _RESERVED_FIRST:
            refused = self._reserved(tokens, "subscribe")
            if refused is not None:
                return refused
        elif not any(subsumes(p, tokens) for p in self.subscribe.allow):
            return _denied(tokens, "not within this token's subscribe allow list "
                           f"({self.subscribe.allow_text()})", "subscribe")
        rule = self.subscribe.denied_by(lambda p: intersects(p, tokens))
        return None if rule is None else _denied(tokens, f"denied by rule deny {rule!r}",
                                                 "subscribe")

    def publish_check(self, size: int = CACHE_SIZE) -> PublishCheck | None:
        """The cached check for one session's publishes; None when all are allowed."""
        return None if self.everything else PublishCheck(self, size)


def _denied(tokens: tuple[str, ...], why: str, what: str) -> Denial:
    return Denial(subjects.PERMISSION_DENIED, f"{what} {'.'.join(tokens)!r}: {why}")


ALL = Permissions(everything=True)
NONE = Permissions()


class PublishCheck:
    """One session's publish decisions, remembered per name (bounded: when full, the
    memory starts again), so the hot path costs a dict look-up per distinct name."""

    __slots__ = ("perms", "cache", "size")

    def __init__(self, perms: Permissions, size: int = CACHE_SIZE) -> None:
        self.perms = perms
        self.cache: dict[str, Denial | None] = {}
        self.size = size

    def first_refused(self, names: Iterable[str]) -> tuple[str, Denial] | None:
        """(name, why) of the first name the token may not publish, or None."""
        cache = self.cache
        for name in names:
            try:
                why = cache[name]
            except KeyError:
                why = self.perms.why_not_publish(name)
                if len(cache) >= self.size:
                    cache.clear()
                cache[name] = why
            if why is not None:
                return name, why
        return None


# -------------------------------------------------------------------- parsing


def parse(value: Any) -> Permissions:
    """The Permissions of what a token maps to (a list of words, one word, or a
    mapping); ValueError with one line naming the problem."""
    if isinstance(value, Permissions):
        return value
    if isinstance(value, str):
        return _from_words([value])
    if isinstance(value, Mapping):
        return _from_mapping(value)
    if isinstance(value, Iterable) and not isinstance(value, bytes):
        return _from_words(list(value))
    raise ValueError("permissions must be a list of words or a mapping of publish/"
                     f"subscribe/services, got {type(value).__name__}")


def parse_tokens(tokens: Any) -> list[tuple[str, Permissions]]:
    """A ``tokens`` setting (a list of tokens, each allowed everything, or a mapping
    token -> permissions) as (token, Permissions) pairs; ValueError naming the entry by
    its place, never by the secret itself."""
    if isinstance(tokens, str | bytes):
        raise ValueError("tokens must be a list of strings or a mapping, not a single "
                         "string")
    if isinstance(tokens, Mapping):
        pairs = []
        for i, (token, value) in enumerate(tokens.items(), 1):
            try:
                pairs.append((token, parse(value)))
            except ValueError as exc:
                raise ValueError(f"tokens: token #{i}: {exc}") from None
    elif isinstance(tokens, Iterable):
        pairs = [(token, ALL) for token in tokens]
    else:
        raise ValueError("tokens must be a list of strings or a mapping token -> "
                         f"permissions, got {type(tokens).__name__}")
    if not pairs:
        raise ValueError("tokens is empty: no client could ever authenticate")
    if not all(isinstance(token, str) and token for token, _ in pairs):
        raise ValueError("tokens: every token must be a non-empty string")
    return pairs


def _word(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where}: every entry must be a non-empty string, got {value!r}")
    if value != EVERYTHING_WORD and (
            "." in value or "*" in value or ">" in value or _dollar(value)
            or any(c.isspace() for c in value)):
        raise ValueError(f"{where}: {value!r} is not a permission (a service name is "
                         "one token: no dots, wildcards, spaces or leading '$')")
    return value


def _from_words(words: list) -> Permissions:
    seen = {_word(w, "permissions") for w in words}
    if EVERYTHING_WORD in seen:
        return ALL
    return Permissions(
        publish=Rules(ORDINARY if PUB_WORD in seen else ()),
        subscribe=Rules(ORDINARY if SUB_WORD in seen else ()),
        services=frozenset(seen - {PUB_WORD, SUB_WORD, subjects.SYS_PERMISSION}),
        sys=subjects.SYS_PERMISSION in seen)


def _from_mapping(value: Mapping) -> Permissions:
    unknown = [str(k) for k in value if k not in _MAPPING_KEYS]
    if unknown:
        raise ValueError(f"permissions: unknown key(s) {', '.join(unknown)} (known: "
                         f"{', '.join(_MAPPING_KEYS)})")
    services = value.get("services", [])
    if isinstance(services, str):
        services = [services]
    if not isinstance(services, list | tuple):
        raise ValueError("permissions.services must be a list of service names")
    grants = {_word(s, "permissions.services") for s in services}
    if EVERYTHING_WORD in grants:
        grants.add(subjects.SYS_PERMISSION)
    return Permissions(publish=_rules(value.get("publish"), "publish"),
                       subscribe=_rules(value.get("subscribe"), "subscribe"),
                       services=frozenset(grants - {subjects.SYS_PERMISSION}),
                       sys=subjects.SYS_PERMISSION in grants)


def _rules(value: Any, where: str) -> Rules:
    if value is None:
        return Rules(ORDINARY)
    if isinstance(value, list | tuple):
        value = {"allow": value}
    if not isinstance(value, Mapping):
        raise ValueError(f"permissions.{where} must be a list of patterns or a mapping "
                         f"of allow/deny, got {type(value).__name__}")
    unknown = [str(k) for k in value if k not in _RULE_KEYS]
    if unknown:
        raise ValueError(f"permissions.{where}: unknown key(s) {', '.join(unknown)} "
                         "(known: allow, deny)")
    allow = value.get("allow")
    return Rules(ORDINARY if allow is None else _patterns(allow, f"{where}.allow", True),
                 _patterns(value.get("deny") or [], f"{where}.deny", False))


def _patterns(value: Any, where: str, allow: bool) -> tuple[tuple[str, ...], ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple):
        raise ValueError(f"permissions.{where} must be a list of patterns")
    out = []
    for pattern in value:
        try:
            tokens = split_pattern(pattern)
        except PatternError as exc:
            raise ValueError(f"permissions.{where}: {exc}") from None
        if allow and tokens[0] in _RESERVED_FIRST:
            raise ValueError(f"permissions.{where}: {pattern!r} is in a reserved area: "
                             "grant it with services (a service name, or sys)")
        out.append(tokens)
    return tuple(dict.fromkeys(out))
