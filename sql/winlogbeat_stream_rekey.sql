-- Recipe step 3: CREATE STREAM WINLOGBEAT_STREAM_REKEY AS SELECT STRINGTOTIMESTAMP(event_data->UtcTime, ...)
-- AS event_date_creation, event_data->... FROM WINLOGBEAT_STREAM WHERE source_name='Microsoft-Windows-Sysmon' PARTITION BY process_guid.
-- Flattens event_data and parses UtcTime ('yyyy-MM-dd HH:mm:ss.SSS', UTC) into a TIMESTAMP; NULL if it does not parse.
-- GUIDs (process_guid, the key, and the parent and logon GUIDs) are stored in one canonical form, '{UPPER}',
-- because hosts and layouts render them differently (case, braces); an empty GUID stays '' (KSQL keys on it).
-- Winlogbeat delivers at least once: a redelivered event (same computer, channel, record number and UtcTime) is
-- kept once, its first delivery (dedupe_key: within the batch and across batches). UtcTime is in the key because
-- a cleared log or a re-imaged host numbers its records from 1 again: other events under the same numbers.
{{ config(materialized='stream', dedupe_key='_computer_name, log_name, _record_number, event_date_creation') }}
{#- canonical_guid: macros/canonical_guid.sql; utc_time: macros/utc_time.sql. -#}
SELECT
    {{ utc_time('s.event_data.UtcTime') }} AS event_date_creation,
    {{ canonical_guid('s.event_data.ProcessGuid') }} AS process_guid,
    s.event_data.ProcessId AS process_id,
    s.event_data.Image AS process_path,
    s.event_data.FileVersion AS file_version,
    s.event_data.Description AS file_description,
    s.event_data.Company AS file_company,
    s.event_data.CommandLine AS process_command_line,
    s.event_data.CurrentDirectory AS process_current_directory,
    s.event_data.User AS user_account,
    {{ canonical_guid('s.event_data.LogonGuid') }} AS user_logon_guid,
    s.event_data.LogonId AS user_logon_id,
    s.event_data.TerminalSessionId AS user_session_id,
    s.event_data.IntegrityLevel AS process_integrity_level,
    s.event_data.Hashes AS hashes,
    {{ canonical_guid('s.event_data.ParentProcessGuid') }} AS parent_process_guid,
    s.event_data.ParentProcessId AS parent_process_id,
    s.event_data.ParentImage AS parent_process_path,
    s.event_data.ParentCommandLine AS parent_process_command_line,
    s.event_data.Protocol AS network_protocol,
    s.event_data.Initiated AS network_connection_initiated,
    s.event_data.SourceIsIpv6 AS src_is_ipv6,
    s.event_data.SourceIp AS src_ip_addr,
    s.event_data.SourceHostname AS src_host_name,
    s.event_data.SourcePort AS src_port,
    s.event_data.SourcePortName AS src_port_name,
    s.event_data.DestinationIsIpv6 AS dst_is_ipv6,
    s.event_data.DestinationIp AS dst_ip_addr,
    s.event_data.DestinationHostname AS dst_host_name,
    s.event_data.DestinationPort AS dst_port,
    s.event_data.DestinationPortName AS dst_port_name,
    s.event_id,
    s.source_name,
    s.log_name,
    s.computer_name AS _computer_name,
    s._record_number,
    s._seq,
    -- Every event_data field the columns above do not carry: the stream's _extra_fields and the one STRUCT field
    -- the recipe does not flatten, Product.
    CASE WHEN s.event_data.Product IS NULL THEN s._extra_fields
         ELSE map_concat(s._extra_fields, MAP {'Product': s.event_data.Product}) END AS _extra_fields
FROM {{ ref('winlogbeat_stream') }} AS s
WHERE s.source_name = 'Microsoft-Windows-Sysmon'
