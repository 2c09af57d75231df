"""Rich outputs sized for agents: previews of big values, images, long output saved whole."""

from __future__ import annotations

from fastmcp import Client

from interp.config import Config
from tests.conftest import run


async def test_dataframes_and_arrays_come_back_as_short_previews(client: Client) -> None:
    r = await run(
        client,
        "import pandas as pd, numpy as np\n"
        "df = pd.DataFrame(np.arange(100_000 * 30).reshape(100_000, 30))\ndf",
    )
    lines = r["result"].splitlines()
    assert len(lines) <= 30 and "[100000 rows x 30 columns]" in r["result"]
    assert "..." in lines[0]  # columns cut too
    a = await run(client, "np.arange(1_000_000)")
    assert len(a["result"]) < 300 and "[shape (1000000,), dtype int64]" in a["result"]
    small = await run(client, "np.arange(5)")
    assert small["result"] == "array([0, 1, 2, 3, 4])"
    s = await run(client, "df[0]")
    assert "Name: 0, Length: 100000" in s["result"] and len(s["result"].splitlines()) <= 25


async def test_output_over_the_cap_is_saved_whole_in_the_workspace(
    client: Client, config: Config
) -> None:
    r = await run(client, "for i in range(20_000):\n    print(f'line {i:05d}')")
    assert r["truncated"]["stdout"] > 0
    assert r["outputs"] == [f"outputs/{r['execution_id']}-stdout.txt"]
    saved = (config.workspace / r["outputs"][0]).read_text()
    assert saved == "".join(f"line {i:05d}\n" for i in range(20_000))
    assert r["outputs"][0] in r["stdout"]  # the cut marker says where the rest is
    small = await run(client, "print('short')")
    assert small["outputs"] == [] and small["stdout"] == "short\n"
