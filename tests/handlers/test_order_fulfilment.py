"""order_fulfilment on the test bed: concurrent orders, injected transient errors, replays."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import structlog
from pymongo import AsyncMongoClient

from changestream_worker import ChangeEvent, HandlerContext, SkipEvent
from changestream_worker.handlers.order_fulfilment import OrderFulfilment, OrderFulfilmentOptions
from tests.support.harness import unique

STOCK = {"a": 5, "b": 5, "c": 3}


@pytest.fixture
async def shop(mongo_uri: str) -> Any:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri, appname="fulfil-test")
    name = unique("shop")
    yield client, client[name]
    await client.admin.command({"configureFailPoint": "failCommand", "mode": "off"})
    await client.drop_database(name)
    await client.close()


class TestOrderFulfilment:
    async def test_concurrent_orders_never_oversell_and_apply_once(self, shop: Any) -> None:
        """20 concurrent paid orders over 3 items, transient commit failures injected, every
        event handled twice: stock never negative, each order fulfilled or backordered once."""
        client, db = shop
        await db.inventory.insert_many(
            [{"_id": sku, "available": n, "reserved": 0} for sku, n in STOCK.items()]
        )
        ctx = HandlerContext(
            client=client,
            database=db,
            state_database=db,
            log=structlog.get_logger(),
            watcher="orders",
            handler="fulfil",
        )
        handler = OrderFulfilment(OrderFulfilmentOptions())
        await handler.start(ctx)
        events: list[ChangeEvent] = []
        async with await db.orders.watch(max_await_time_ms=200) as stream:
            await db.orders.insert_many(
                [
                    {
                        "_id": i,
                        "status": "paid",
                        "items": [
                            {"sku": "abc"[i % 3], "qty": 1 + i % 2},
                            {"sku": "abc"[(i + 1) % 3], "qty": 1},
                        ],
                    }
                    for i in range(20)
                ]
            )
            while len(events) < 20:
                change = await stream.try_next()
                if change is not None:
                    events.append(ChangeEvent(change))
        await client.admin.command(
            {
                "configureFailPoint": "failCommand",
                "mode": {"times": 3},
                "data": {
                    "failCommands": ["commitTransaction"],
                    "errorCode": 112,
                    "errorLabels": ["TransientTransactionError"],
                    "appName": "fulfil-test",
                },
            }
        )
        await asyncio.gather(*(handler.handle(e, ctx) for e in events))
        for e in events:  # a replay of every event changes nothing
            with pytest.raises(SkipEvent):
                await handler.handle(e, ctx)

        orders = await db.orders.find().to_list()
        assert {o["status"] for o in orders} <= {"fulfilled", "backordered"}
        assert len(orders) == 20
        shipments = await db.shipments.find().to_list()
        fulfilled = [o for o in orders if o["status"] == "fulfilled"]
        assert sorted(s["order"] for s in shipments) == sorted(o["_id"] for o in fulfilled)
        assert await db.fulfilment_inbox.count_documents({}) == 20
        used: dict[str, int] = {}
        for o in fulfilled:
            for item in o["items"]:
                used[item["sku"]] = used.get(item["sku"], 0) + item["qty"]
        for inv in await db.inventory.find().to_list():
            assert inv["available"] >= 0
            assert inv["available"] + inv["reserved"] == STOCK[inv["_id"]]
            assert inv["reserved"] == used.get(inv["_id"], 0)
        assert any(o["status"] == "backordered" for o in orders), "stock was meant to run out"
