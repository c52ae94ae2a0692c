-- Recipe step 5: CREATE TABLE SYSMON_PROCESS_CREATE_TABLE (...) WITH (KAFKA_TOPIC='SYSMON_PROCESS_CREATE', KEY='process_guid').
-- The current ProcessCreate row per process_guid: the latest by arrival wins; a null key is not a table row (as in KSQL).
{{ config(materialized='table', unique_key='process_guid', order_by='_seq') }}
SELECT
    event_date_creation,
    process_guid,
    process_id,
    process_path,
    file_version,
    file_description,
    file_company,
    process_command_line,
    process_current_directory,
    user_account,
    user_logon_guid,
    user_logon_id,
    user_session_id,
    process_integrity_level,
    hashes,
    parent_process_guid,
    parent_process_id,
    parent_process_path,
    parent_process_command_line,
    event_id,
    source_name,
    log_name,
    _seq
FROM {{ ref('sysmon_process_create') }}
WHERE process_guid IS NOT NULL
