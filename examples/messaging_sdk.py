"""Publish and consume with the Python SDK.

Run against a running node (``make demo`` in another terminal):

    .venv/bin/python examples/messaging_sdk.py
"""

from __future__ import annotations

import asyncio

from mezzo import Mezzo


async def main() -> None:
    async with Mezzo() as client:
        for n in range(3):
            await client.messaging.publish("example-orders", {"order": n}, key=f"customer-{n % 2}", tags=["paid"])
        await client.messaging.publish("example-orders", {"order": "later"}, delay="2s")

        async with client.messaging.subscribe("example-orders", "example-billing", wait=5) as sub:
            received = 0
            async for message in sub:
                print(f"order {message.data['order']} (key {message.key}, attempt {message.attempt})")
                await message.ack()
                received += 1
                if received == 4:
                    break


if __name__ == "__main__":
    asyncio.run(main())
