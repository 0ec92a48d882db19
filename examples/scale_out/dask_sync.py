# dask_sync.py: sync a Dask DataFrame of members, one client per partition and one Braze
# budget shared through Redis.
import os

import pandas as pd

import antavo_braze as ab

REDIS_URL = os.environ["REDIS_URL"]
COUNTS = pd.DataFrame({name: pd.Series(dtype="int64") for name in ("succeeded", "failed")})


def sync_partition(members: pd.DataFrame) -> pd.DataFrame:
    # Plain Python values: pandas' missing values (NaN, NA) become None, i.e. "not set".
    records = members.astype(object).where(members.notna(), None).to_dict("records")
    pacer = ab.RedisPacer(REDIS_URL, key="antavo_braze:acme-prod")
    with ab.BrazeClient.from_env(pacer=pacer) as client:
        report = ab.Syncer(client, "mapping.json", handle_signals=False).sync_members(records)
    return pd.DataFrame({"succeeded": [report.succeeded], "failed": [report.failed]})


def sync_members(ddf):  # a dask.dataframe.DataFrame with an "id" column
    return ddf.map_partitions(sync_partition, meta=COUNTS).compute().sum()
