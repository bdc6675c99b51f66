"""Sets up a Feast feature repository for `fathom bench lookup --feast-python`.

    python feast_lookup.py REPO REDIS_HOST:PORT KEYS

Writes REPO/feature_store.yaml (Redis online store, local registry), a feature view `cards`
keyed by `card_id` with the 10 features `fathom bench lookup` asks for (amount_{count, sum,
mean, max, stddev}_{1h, 24h}), applies it and writes one row of random values per card
`card-000000` … into the online store with `FeatureStore.write_to_online_store`. The bench then
runs `feast -c REPO serve` and sends it the same `POST /get-online-features` bodies as Fathom.
"""

import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
from feast import Entity, FeatureStore, FeatureView, Field, FileSource, ValueType
from feast.types import Float64, Int64

FUNCTIONS = ["count", "sum", "mean", "max", "stddev"]
WINDOWS = ["1h", "24h"]


def main(repo: Path, redis: str, keys: int) -> None:
    repo.mkdir(parents=True, exist_ok=True)
    (repo / "feature_store.yaml").write_text(
        "project: fathom_bench\n"
        f"registry: {repo / 'registry.db'}\n"
        "provider: local\n"
        f"online_store:\n  type: redis\n  connection_string: \"{redis}\"\n"
        "offline_store:\n  type: file\n"
        "entity_key_serialization_version: 3\n"
    )
    names = [f"amount_{f}_{w}" for w in WINDOWS for f in FUNCTIONS]
    rng = np.random.default_rng(7)
    now = datetime.now(timezone.utc)
    frame = pd.DataFrame({"card_id": [f"card-{k:06}" for k in range(keys)], "ts": [now] * keys})
    for name in names:
        if name.startswith("amount_count"):
            frame[name] = rng.integers(1, 10, keys).astype("int64")
        else:
            frame[name] = rng.random(keys) * 300.0
    data = repo / "cards.parquet"
    frame.to_parquet(data)
    card = Entity(name="card", join_keys=["card_id"], value_type=ValueType.STRING)
    schema = [Field(name=n, dtype=Int64 if n.startswith("amount_count") else Float64) for n in names]
    cards = FeatureView(
        name="cards",
        entities=[card],
        schema=schema,
        source=FileSource(path=str(data), timestamp_field="ts"),
        ttl=timedelta(days=1),
        online=True,
    )
    store = FeatureStore(repo_path=str(repo))
    store.apply([card, cards])
    store.write_to_online_store("cards", frame)
    check = store.get_online_features(features=[f"cards:{names[0]}"], entity_rows=[{"card_id": "card-000000"}])
    assert check.to_dict()[names[0]][0] is not None, "the online store returned nothing"


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]))
