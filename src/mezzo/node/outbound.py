"""Which hosts a node may call on a token holder's say-so — transaction branches
(``MEZZO_TX_ALLOW_HOSTS``), push endpoints and half-message check-backs
(``MEZZO_MESSAGING_ALLOW_HOSTS``): a guard against pointing the node at the network it runs in (SSRF).

Entries are host names, ``*.`` suffix patterns (``*.svc.cluster.local``: any name under it) and IP
addresses or networks (``10.0.0.0/8``, ``::1``). A URL's host passes when it is a name that matches a
name entry, or an IP literal inside a network entry; names are not resolved to be matched against
networks (allow the names themselves). No entries (the default): every host passes.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Outbound:
    def __init__(self, entries: Iterable[str] = ()) -> None:
        self.names: set[str] = set()
        self.suffixes: list[str] = []
        self.networks: list[Network] = []
        self.entries = [e.strip() for e in entries if e.strip()]
        for entry in self.entries:
            lowered = entry.lower().rstrip(".")
            if lowered.startswith("*."):
                if len(lowered) < 3:
                    raise ValueError(f"allowed host {entry!r}: '*.' needs a domain after it")
                self.suffixes.append(lowered[1:])  # ".svc.cluster.local"
                continue
            try:
                self.networks.append(ipaddress.ip_network(lowered.strip("[]"), strict=False))
            except ValueError:
                if not lowered or any(c in lowered for c in "/:*@ "):
                    raise ValueError(f"allowed host {entry!r} is neither a name, a *.domain nor an IP network") \
                        from None
                self.names.add(lowered)

    @classmethod
    def parse(cls, text: str) -> Outbound:
        """From the comma-separated setting."""
        return cls(text.split(","))

    @property
    def open(self) -> bool:
        return not self.entries

    def allows(self, host: str) -> bool:
        if not self.entries:
            return True
        host = host.lower().rstrip(".").strip("[]")
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return host in self.names or any(host.endswith(suffix) for suffix in self.suffixes)
        return any(address in network for network in self.networks)
