-- Recipe step 4: CREATE STREAM SYSMON_PROCESS_CREATE AS SELECT ... FROM WINLOGBEAT_STREAM_REKEY WHERE event_id=1.
-- Sysmon ProcessCreate events, with the process and parent-process columns.
{{ config(materialized='stream') }}
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
FROM {{ ref('winlogbeat_stream_rekey') }}
WHERE event_id = 1
