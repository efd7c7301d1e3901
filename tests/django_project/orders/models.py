from django.db import models, transaction

from eventbus.django import queue_event_on_commit, send_event_on_commit


class Order(models.Model):
    item = models.CharField(max_length=100)

    class Meta:
        app_label = "orders"


def place_order(item: str, fail: bool = False) -> Order:
    """What a view does: save a row and announce it, in one transaction."""
    with transaction.atomic():
        order = Order.objects.create(item=item)
        queue_event_on_commit("order_events", {"order_id": order.pk, "item": item})
        send_event_on_commit({"type": "order", "order_id": order.pk}, [1])
        if fail:
            raise RuntimeError("payment declined")
    return order
