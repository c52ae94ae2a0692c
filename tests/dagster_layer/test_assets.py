"""The asset factory: metadata and check results of one model step."""

from __future__ import annotations

from dbt_like import SchemaTest, StepResult, TestResult
from sysmon_assets.dagster_layer.assets import check_results, step_metadata


def test_a_failing_schema_test_becomes_a_failed_check_with_its_count() -> None:
    result = StepResult("sysmon_join", tests=[TestResult("sysmon_join", SchemaTest("not_null", "process_guid"), 3)])
    (check,) = check_results("sysmon_join", [result])
    assert (check.check_name, check.passed, check.metadata["failing_rows"].value) == (
        "sysmon_join__not_null_process_guid",
        False,
        3,
    )


def test_side_tables_report_their_rows_on_the_main_asset() -> None:
    main = StepResult("winlogbeat_stream", rows_in=10, rows_written=8, table_rows=80)
    side = StepResult("winlogbeat_rejects", rows_written=2)
    metadata = step_metadata([main, side], batch_id=4)
    assert metadata["rows_written"] == 8
    assert metadata["winlogbeat_rejects_rows_written"] == 2
    assert metadata["dagster/row_count"] == 80
    assert "pending_joins" not in metadata
    assert "gave_up_rows_read" not in metadata


def test_a_step_that_read_rows_another_model_gave_up_on_reports_how_many() -> None:
    main = StepResult("sigma_detections", unmatched_read={"sysmon_join": 3})
    assert step_metadata([main], batch_id=4)["gave_up_rows_read"].value == {"sysmon_join": 3}


def test_a_view_reports_no_row_count() -> None:
    metadata = step_metadata([StepResult("sysmon_join_ancestry", table_rows=None)], batch_id=4)
    assert "dagster/row_count" not in metadata and metadata["view"] is True
    assert "view" not in step_metadata([StepResult("sysmon_join", table_rows=0)], batch_id=4)
