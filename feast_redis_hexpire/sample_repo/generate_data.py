"""Write the sample repo's offline data: users with the seed's distributions.

python generate_data.py --count 500 --seed 1   (in a copy made by `feast-hexpire init-sample DIR`)

Batch rows are stamped an hour ago (inside the batch view's 2-day window); streaming rows are
stamped now, inside the streaming view's 5-minute window, so a materialization within the next
five minutes writes both layers. Newer streaming values come from ``python push.py``.
"""

import argparse
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

from feast_redis_hexpire.synth import batch_rows, streaming_frame, user_id

DATA = Path(__file__).parent / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    DATA.mkdir(exist_ok=True)
    now = datetime.now(UTC).replace(microsecond=0)
    batch_rows(args.count, args.seed, now - timedelta(hours=1)).to_parquet(DATA / "user_batch.parquet")
    ids = [user_id(i) for i in range(1, args.count + 1)]
    streaming = streaming_frame(ids, random.Random(args.seed), now - timedelta(seconds=5))
    streaming.to_parquet(DATA / "user_streaming.parquet")
    print(f"wrote {args.count} users to {DATA.name}/user_batch.parquet and user_streaming.parquet")


if __name__ == "__main__":
    main()
