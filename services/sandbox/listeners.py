"""Which broker listeners an unauthenticated client could reach from another machine as a super user.

A KRaft controller listener that speaks PLAINTEXT sees its peers as ``User:ANONYMOUS``; with an authorizer,
that principal must be a super user for the quorum's own requests. That is safe only on a loopback address:
:func:`anonymous_super_user_exposure` finds the listeners where it is not, for the local broker
(:mod:`services.sandbox.broker` refuses to write such a configuration) and for the compose file's tests.
"""

from __future__ import annotations

#: Hosts a listener may bind without being reachable from another machine.
LOOPBACK = ("127.", "localhost", "::1", "[::1]")


def anonymous_super_user_exposure(properties: str) -> list[str]:
    """The listeners on which an unauthenticated client would be a super user although they are reachable
    from outside the host: with ``User:ANONYMOUS`` in ``super.users``, every PLAINTEXT (or SSL) listener
    is such a door unless it binds a loopback address (an empty host or ``0.0.0.0`` binds them all).
    An empty list: no such door."""
    props: dict[str, str] = {}
    for line in properties.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and not key.startswith("#"):
            props[key.strip()] = value.strip()
    if "User:ANONYMOUS" not in props.get("super.users", "").split(";"):
        return []
    protocols = dict(p.split(":", 1) for p in props.get("listener.security.protocol.map", "").split(",") if p)
    exposed = []
    for listener in filter(None, props.get("listeners", "").split(",")):
        name, _, address = listener.partition("://")
        host = address.rpartition(":")[0]
        anonymous = protocols.get(name, name) in ("PLAINTEXT", "SSL")  # no SASL: the peer is ANONYMOUS
        if anonymous and not host.startswith(LOOPBACK):
            exposed.append(listener)
    return exposed
