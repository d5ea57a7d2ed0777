"""Push fresh streaming features through Feast's push API: the streaming layer, as a stream
processor would write it (each written field gets the per-field TTL).

python push.py u0001 [u0002 ...]
"""

import random
import sys
from pathlib import Path

from feast import FeatureStore

from feast_redis_hexpire.synth import streaming_frame


def main() -> None:
    users = sys.argv[1:] or ["u0001"]
    store = FeatureStore(repo_path=str(Path(__file__).parent))
    store.push("user_events_push", streaming_frame(users, random.Random()))
    print(f"pushed fresh streaming features for {', '.join(users)} to user_events_push")


if __name__ == "__main__":
    main()
