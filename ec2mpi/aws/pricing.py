"""On-demand prices: the Pricing API where it answers, else a small static table (said so).

Why a fallback: the Pricing API lives in a few regions only and emulators do not
implement it; a cost estimate that says where its numbers came from beats none.
"""
from __future__ import annotations

import json

from .session import AwsSession, BotoCoreError, ClientError

# USD per hour, Linux, us-east-1 list prices (2024). Only a rough guide elsewhere.
STATIC_ON_DEMAND = {
    "t3.micro": 0.0104, "t3.small": 0.0208, "t3.medium": 0.0416, "t3.large": 0.0832,
    "m5.large": 0.096, "m6i.large": 0.096, "m7i.large": 0.1008,
    "c5.large": 0.085, "c5.xlarge": 0.17, "c5.2xlarge": 0.34, "c5n.large": 0.108,
    "c6a.large": 0.0765, "c6a.xlarge": 0.153, "c6i.large": 0.085, "c6i.xlarge": 0.17,
    "c6i.2xlarge": 0.34, "c7i.large": 0.08925, "hpc6a.48xlarge": 2.88,
}
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
        return {t: STATIC_ON_DEMAND[t] for t in types if t in STATIC_ON_DEMAND}, STATIC_SOURCE
