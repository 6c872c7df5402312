"""The node's keyring: one set of AES keys for every secret the node keeps at rest.

Config secrets and the secret fields of resources (gateway credentials, certificate keys) are
sealed with it. It is loaded once, by the first module that needs it, from ``MEZZO_SECRET_KEYS``
or else the key file in the data directory (created on first start).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mezzo.config.secrets import Keyring

if TYPE_CHECKING:
    from mezzo.node.node import Node

KEY_FILE = "secret.key"


def node_keyring(node: Node) -> Keyring:
    """The node's keyring (loaded and provided as ``Keyring`` on first use)."""
    if not node.has(Keyring):
        settings = node.settings
        keys = settings.secret_keys.get_secret_value() if settings.secret_keys else None
        node.provide(Keyring, Keyring.load(keys, settings.data_dir / KEY_FILE))
    return node.service(Keyring)
