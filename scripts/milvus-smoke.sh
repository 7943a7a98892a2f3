#!/usr/bin/env bash
# Manual smoke test of the docker-compose `milvus` profile, where a Docker engine runs (not in CI):
# builds the image, starts Milvus standalone (etcd, MinIO, Milvus) and the Milvus-backed indexer and API,
# waits for the demo to be indexed into Milvus, searches it by an item and by an uploaded photo, then stops
# everything (volumes kept; `docker compose --profile milvus down -v` removes them).
set -euo pipefail
cd "$(dirname "$0")/.."

compose=(docker compose --profile milvus)
api=http://127.0.0.1:8001
trap '"${compose[@]}" down' EXIT

"${compose[@]}" build
# milvus-api waits for Milvus to be healthy and for both indexers (the demo is rendered once, then indexed into
# Milvus by milvus-indexer) to finish.
"${compose[@]}" up -d milvus-api

for _ in $(seq 1 180); do  # up to 30 minutes: the first run renders and embeds the whole demo catalog
    if curl -fsS "$api/readyz" >/dev/null 2>&1; then break; fi
    sleep 10
done
curl -fsS "$api/readyz"
echo

# one catalog row (item id and image path) read inside the API container
read -r item image < <("${compose[@]}" exec -T milvus-api python -c '
import csv, sys
row = next(csv.DictReader(open("/data/demo/catalog.csv")))
print(row["item_id"], row["image"])')
echo "similar to item $item:"
curl -fsS "$api/items/$item/similar?k=5" | python3 -m json.tool | head -40

echo "search by photo ($image):"
"${compose[@]}" exec -T milvus-api sh -c "cat '/data/demo/$image'" > /tmp/lookalike-smoke-query.img
curl -fsS -F "image=@/tmp/lookalike-smoke-query.img" "$api/search?k=5" | python3 -m json.tool | head -40
rm -f /tmp/lookalike-smoke-query.img

"${compose[@]}" exec -T milvus-api lookalike generations
echo "milvus smoke: OK"
