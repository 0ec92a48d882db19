# %% [markdown]
# # antavo_braze in a notebook
#
# A jupytext "percent" notebook (open it in Jupyter with jupytext, or run it as a script).
# It runs top to bottom against the embedded FakeBraze: no credentials, no network.
# pandas and matplotlib are optional; without them the same steps use plain dicts and text.

# %%
import antavo_braze as ab
from antavo_braze._demo import DEMO_MAPPING, sample_events, sample_members
from antavo_braze.testing import FakeBraze

fake = FakeBraze(api_key="notebook-key").start()
client = fake.client(max_in_flight=4)
mapping = ab.Mapping.from_dict(DEMO_MAPPING)
mapping  # in Jupyter this renders as a table  # noqa: B018

# %% [markdown]
# ## Load members — from a DataFrame when pandas is installed

# %%
members = list(sample_members(200))
try:
    import pandas as pd
except ModuleNotFoundError:
    pd = None
if pd is not None:
    frame = pd.DataFrame(members)
    records = frame.to_dict(orient="records")  # one dict per member
else:
    records = members
print(f"{len(records)} members loaded ({'pandas' if pd is not None else 'plain dicts'})")

# %% [markdown]
# ## Preview the payloads (dry run, no network)

# %%
syncer = ab.Syncer(client, mapping, dead_letter=ab.MemoryDeadLetter(), progress=True)
bodies = syncer.preview_members(records[:3])
print(bodies[0]["attributes"][0])

# %% [markdown]
# ## Sync, then look at the report

# %%
records.append({"id": "broken", "score": "lots"})
report = syncer.sync_members(records)
print(report)
table = report.failures_table()
if pd is not None:
    print(pd.DataFrame(table))
else:
    print(table)
html = report._repr_html_()  # what Jupyter shows for `report`
assert "broken" in html

# %% [markdown]
# ## Events, and their daily counts from Braze

# %%
events = syncer.sync_events(sample_events(300))
print(events.summary())
series = client.event_series("loyalty_enrolled", length=7, unit="day")
try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ModuleNotFoundError:
    plt = None
if plt is not None:
    figure, axes = plt.subplots()
    axes.bar([point["time"] for point in series], [point["count"] for point in series])
    axes.set_title("loyalty_enrolled per day")
    figure.autofmt_xdate()
    figure.savefig("event_series.png")
else:
    for point in series:
        print(point["time"], "#" * min(point["count"], 60))

# %%
client.close()
fake.stop()
assert report.failed == 1
assert report.succeeded == 200
