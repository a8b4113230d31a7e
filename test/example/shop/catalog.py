"""Builds its catalogue at import time, as real apps build registries,
ORM metadata or schemas: the import costs real time once."""
import hashlib
import json
from decimal import Decimal

PRODUCTS = {}
for n in range(250000):
    sku = hashlib.sha256(str(n).encode()).hexdigest()[:12]
    PRODUCTS[sku] = {"name": f"item {n}", "price": Decimal(n % 997) / 10}

FIRST = sorted(PRODUCTS)[0]
SNAPSHOT = json.dumps({k: str(v["price"]) for k, v in list(PRODUCTS.items())[:100]})


def price(sku, qty=1):
    if qty < 1:
        raise ValueError("quantity must be positive")
    return PRODUCTS[sku]["price"] * qty
