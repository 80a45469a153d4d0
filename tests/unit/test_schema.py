"""The Parquet schemas are built from the row types in schema.py, so the two cannot drift apart."""

from __future__ import annotations

import pyarrow as pa

from syneg_ray import schema


def test_arrow_schema_follows_the_row_type_field_by_field() -> None:
    mined = schema.arrow_schema(schema.MinedRow)
    assert mined.names == list(schema.MinedRow.__annotations__)
    assert mined.field("negative_scores").type == pa.list_(pa.float32())  # scores are kept in float32
    assert mined.field("positive_score").type == pa.float32()
    assert mined.field("negative_ids").type == pa.list_(pa.string())
    synthetic = schema.arrow_schema(schema.SyntheticRow)
    assert synthetic.field("seed").type == pa.int64() and synthetic.field("key").type == pa.string()
    assert schema.arrow_schema(schema.Instance).names == list(schema.INSTANCE_COLUMNS)
