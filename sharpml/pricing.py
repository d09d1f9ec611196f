"""RunPod serverless GPU prices, per second of a worker's time, in US dollars.

RunPod's published per-second prices of flex (scale-from-zero) serverless workers, by GPU type, as
collected for this project on 2026-11-25 (../shared/notes/training-here.md). RunPod bills a worker's
start, execution and idle time (5 s by default), each run rounded up to a whole second; the operator
sees only the execution time, so a job's recorded cost is a lower bound of the bill by the cold
start and idle seconds. SHARPML_RUNPOD_PRICE_PER_SECOND overrides the table (a contract price, a
currency other than the dollar's). Pure data: the settings registry takes its choices from here.
"""

from __future__ import annotations

from decimal import Decimal

#: GPU type -> US dollars per second (flex workers).
RUNPOD_FLEX_USD_PER_SECOND: dict[str, Decimal] = {
    "A4000": Decimal("0.00016"),  # 16 GB tier
    "L4": Decimal("0.00019"),  # 24 GB tier (L4, A5000, 3090)
    "A5000": Decimal("0.00019"),
    "3090": Decimal("0.00019"),
    "4090": Decimal("0.00031"),
    "A6000": Decimal("0.00034"),  # 48 GB tier (A6000, A40)
    "A40": Decimal("0.00034"),
    "L40S": Decimal("0.00053"),
    "A100-80GB": Decimal("0.00076"),
    "H100": Decimal("0.00116"),
}
GPU_TYPES = tuple(RUNPOD_FLEX_USD_PER_SECOND)
