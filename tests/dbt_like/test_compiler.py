"""dbt_like.compiler's Shard: which batch ids and bookkeeping rows a shard owns."""

from __future__ import annotations

import duckdb
import pytest

from dbt_like.compiler import Shard


@pytest.mark.parametrize(("shard", "models"), [(Shard(0, 1), ["join"]), (Shard(1, 3), ["join", "hunt"])])
def test_rows_of_selects_the_bookkeeping_rows_of_the_shards_models_only(shard: Shard, models: list[str]) -> None:
    con = duckdb.connect()
    con.execute(
        "CREATE TABLE pending AS SELECT * FROM (VALUES ('join', 0), ('join', 1), ('hunt', 1), ('other', 1), "
        "('join', 2), ('hunt', 0)) AS t(model, shard)"
    )
    selected = con.execute(f"SELECT model, shard FROM pending WHERE {shard.rows_of(*models)} ORDER BY ALL").fetchall()
    expected = con.execute(
        "SELECT model, shard FROM pending WHERE list_contains($models, model) AND shard = $index ORDER BY ALL",
        {"models": models, "index": shard.index},
    ).fetchall()
    assert selected == expected
    assert selected  # each case selects some rows and leaves others
    assert len(selected) < 6


def test_a_shard_owns_every_countth_batch_id_from_its_index_plus_one() -> None:
    con = duckdb.connect()
    owned = con.execute(
        f"SELECT list(_batch_id) FROM range(1, 10) AS t(_batch_id) WHERE {Shard(1, 3).owns()}"
    ).fetchone()
    assert owned == ([2, 5, 8],)
    assert Shard(1, 3).first_above(5) == 8
    assert Shard(1, 3).first_above(4) == 5
