"""Rich outputs sized for agents: previews of big values, images, long output saved whole."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from fastmcp import Client
from mcp.types import ImageContent
from PIL import Image

from interp.config import Config
from interp.server import create_server
from tests.conftest import make_config, run


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


async def test_big_and_extra_images_are_downscaled_or_saved(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    config = config.replace(
        limits=dataclasses.replace(config.limits, max_image_bytes=200_000, max_images=2)
    )
    async with Client(create_server(config)) as c:
        raw = await c.call_tool(
            "run_python_code",
            {
                "code": "from PIL import Image\nimport os\n"
                "noise = Image.frombytes('RGB', (1200, 1200), os.urandom(1200 * 1200 * 3))\n"
                "display(noise)\ndisplay(Image.new('RGB', (8, 8)))\n"
                "display(Image.new('RGB', (9, 9)))"
            },
        )
        r = raw.structured_content
        assert r is not None
        inline = [b for b in raw.content if isinstance(b, ImageContent)]
        assert len(inline) == 2 and r["images"][0]["bytes"] <= 200_000
        assert any("downscaled" in n for n in r["notices"])
        # The original of the big one, and the third image (over max_images), are saved.
        assert len(r["outputs"]) == 2 and all(p.startswith("outputs/") for p in r["outputs"])
        assert any("more than 2 images" in d and "saved as" in d for d in r["images_dropped"])
        with Image.open(config.workspace / r["outputs"][0]) as original:
            assert original.size == (1200, 1200)
