"""Prices: spot from EC2's spot price history; on-demand from the Pricing API where it
answers, else the static list in `ec2mpi/catalog.py` (and the source says so).

Why a fallback: the Pricing API lives in a few regions only and emulators do not
implement it; a cost estimate that says where its numbers came from beats none.
"""
from __future__ import annotations

import json
import time

from .. import catalog
from ..errors import explain_client_error
from .session import AwsSession, BotoCoreError, ClientError

STATIC_SOURCE = "static us-east-1 list prices (Pricing API unavailable)"


def on_demand_prices(session: AwsSession, region: str, types) -> tuple[dict, str]:
    """(type -> USD/hour, source). Types the API and the table do not know are left out."""
    client = session.client("pricing", max_attempts=1)
    prices = {}
    try:
        for itype in types:
            resp = client.get_products(ServiceCode="AmazonEC2", MaxResults=1, Filters=[
                {"Type": "TERM_MATCH", "Field": f, "Value": v} for f, v in (
                    ("instanceType", itype), ("regionCode", region), ("operatingSystem", "Linux"),
                    ("tenancy", "Shared"), ("preInstalledSw", "NA"), ("capacitystatus", "Used"))])
            for doc in resp.get("PriceList", []):
                product = json.loads(doc) if isinstance(doc, str) else doc
                for term in product.get("terms", {}).get("OnDemand", {}).values():
                    for dim in term.get("priceDimensions", {}).values():
                        prices[itype] = float(dim["pricePerUnit"]["USD"])
        return prices, "AWS Pricing API"
    except (ClientError, BotoCoreError, KeyError, ValueError):
        static = {t: catalog.on_demand(t) for t in types}
        return {t: p for t, p in static.items() if p is not None}, STATIC_SOURCE


def spot_prices(session: AwsSession, types) -> dict:
    """Latest Linux spot price per type (the highest across AZs: an upper estimate)."""
    try:
        resp = session.client("ec2").describe_spot_price_history(
            InstanceTypes=list(types), MaxResults=1000, StartTime=time.time())
    except ClientError as err:
        raise explain_client_error("ec2:DescribeSpotPriceHistory", err) from err
    latest: dict = {}
    for rec in resp["SpotPriceHistory"]:
        if not rec.get("ProductDescription", "").startswith("Linux/UNIX"):
            continue
        key = (rec["InstanceType"], rec.get("AvailabilityZone"))
        if key not in latest or rec["Timestamp"] > latest[key]["Timestamp"]:
            latest[key] = rec
    prices: dict = {}
    for (itype, _az), rec in latest.items():
        prices[itype] = max(prices.get(itype, 0.0), float(rec["SpotPrice"]))
    return prices
