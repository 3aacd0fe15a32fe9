"""order_fulfilment: reserve stock and ship a paid order, exactly once, never overselling.

Guarantee: exactly-once effects. Everything happens in one MongoDB transaction: the event's
id goes into an inbox collection (unique ``_id``), stock is reserved only where enough is
available, a shipment is created and the order marked ``fulfilled`` — or the order is marked
``backordered`` naming the short items. A retried, replayed or redelivered event finds its
id in the inbox and changes nothing; concurrent orders for the same item conflict inside
the server and ``with_transaction`` retries them, so stock never goes below zero.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from typing import Any

from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.errors import CollectionInvalid, DuplicateKeyError

from changestream_worker import ChangeEvent, Handler, HandlerContext, HandlerOptions, SkipEvent


class OrderFulfilmentOptions(HandlerOptions):
    """Options of ``order_fulfilment`` (see config/worker.yaml)."""

    inventory_collection: str = "inventory"
    shipments_collection: str = "shipments"
    inbox_collection: str = "fulfilment_inbox"
    orders_collection: str | None = None  # default: the collection the event comes from


class _Done(Exception):
    pass


class OrderFulfilment(Handler[OrderFulfilmentOptions]):
    """Fulfils or backorders an order when it becomes ``paid``."""

    async def start(self, ctx: HandlerContext) -> None:
        # transactions cannot create collections on every server version: create them first
        for name in (self.options.inbox_collection, self.options.shipments_collection):
            with contextlib.suppress(CollectionInvalid):
                await ctx.database.create_collection(name)

    @staticmethod
    def _became_paid(event: ChangeEvent) -> bool:
        if event.operation_type in ("insert", "replace"):
            return (event.full_document or {}).get("status") == "paid"
        if event.operation_type == "update":
            fields = (event.update_description or {}).get("updatedFields") or {}
            return fields.get("status") == "paid"
        return False

    async def handle(self, event: ChangeEvent, ctx: HandlerContext) -> None:
        if not self._became_paid(event):
            raise SkipEvent("the order did not become paid")
        db = ctx.database
        o = self.options
        orders = db[o.orders_collection or event.namespace.coll or "orders"]

        async def apply(session: AsyncClientSession) -> str:
            try:
                await db[o.inbox_collection].insert_one(
                    {"_id": event.event_id, "order": event.document_id, "at": datetime.now(UTC)},
                    session=session,
                )
            except DuplicateKeyError:
                raise _Done("already applied") from None
            order = await orders.find_one({"_id": event.document_id}, session=session)
            if order is None or order.get("status") != "paid":
                return "skipped"
            items: list[dict[str, Any]] = list(order.get("items") or [])
            stock = {
                d["_id"]: d
                async for d in db[o.inventory_collection].find(
                    {"_id": {"$in": [i["sku"] for i in items]}}, session=session
                )
            }
            short = [
                i["sku"] for i in items if stock.get(i["sku"], {}).get("available", 0) < i["qty"]
            ]
            if short:
                await orders.update_one(
                    {"_id": order["_id"]},
                    {"$set": {"status": "backordered", "short": short}},
                    session=session,
                )
                return "backordered"
            for item in items:
                res = await db[o.inventory_collection].update_one(
                    {"_id": item["sku"], "available": {"$gte": item["qty"]}},
                    {"$inc": {"available": -item["qty"], "reserved": item["qty"]}},
                    session=session,
                )
                if res.modified_count != 1:  # cannot happen inside the snapshot; be sure
                    raise RuntimeError(f"stock of {item['sku']} changed under the transaction")
            shipment = await db[o.shipments_collection].insert_one(
                {"order": order["_id"], "items": items, "created": datetime.now(UTC)},
                session=session,
            )
            await orders.update_one(
                {"_id": order["_id"]},
                {"$set": {"status": "fulfilled", "shipment_id": shipment.inserted_id}},
                session=session,
            )
            return "fulfilled"

        async with ctx.client.start_session() as session:
            try:
                outcome = await session.with_transaction(apply)
            except _Done:
                raise SkipEvent("event already applied (inbox)") from None
        ctx.log.info("order_processed", order=str(event.document_id), outcome=outcome)
