-- Recipe step 2: CREATE STREAM WINLOGBEAT_STREAM (... event_data STRUCT<...>, event_id INTEGER)
-- WITH (KAFKA_TOPIC='winlogbeat', VALUE_FORMAT='JSON'): the landing folder plays the topic.
-- One row per landed JSON object line, typed as the CREATE STREAM declares. A field that does not
-- coerce becomes NULL and is listed in _coercion_errors; the row is kept. Lines that are not JSON
-- objects go to winlogbeat_rejects. Columns starting with _ are ingest metadata.
{{ config(materialized='stream') }}
WITH landed AS (
    SELECT l.* REPLACE (CAST(l.line AS BLOB) AS line), try(decode(CAST(l.line AS BLOB))) AS text  -- NULL if not UTF-8
    FROM {{ source('landed_lines') }} AS l
), parsed AS (
    SELECT landed.*, try(from_json(text, '
        {"source_name": "VARCHAR", "type": "VARCHAR", "task": "VARCHAR", "log_name": "VARCHAR",
         "computer_name": "VARCHAR", "event_id": "VARCHAR", "record_number": "VARCHAR",
         "event_data": {
             "UtcTime": "VARCHAR", "ProcessGuid": "VARCHAR", "ProcessId": "VARCHAR",
             "Image": "VARCHAR", "FileVersion": "VARCHAR", "Description": "VARCHAR",
             "Product": "VARCHAR", "Company": "VARCHAR", "CommandLine": "VARCHAR",
             "CurrentDirectory": "VARCHAR", "User": "VARCHAR", "LogonGuid": "VARCHAR",
             "LogonId": "VARCHAR", "TerminalSessionId": "VARCHAR", "IntegrityLevel": "VARCHAR",
             "Hashes": "VARCHAR", "ParentProcessGuid": "VARCHAR", "ParentProcessId": "VARCHAR",
             "ParentImage": "VARCHAR", "ParentCommandLine": "VARCHAR", "Protocol": "VARCHAR",
             "Initiated": "VARCHAR", "SourceIsIpv6": "VARCHAR", "SourceIp": "VARCHAR",
             "SourceHostname": "VARCHAR", "SourcePort": "VARCHAR", "SourcePortName": "VARCHAR",
             "DestinationIsIpv6": "VARCHAR", "DestinationIp": "VARCHAR", "DestinationHostname": "VARCHAR",
             "DestinationPort": "VARCHAR", "DestinationPortName": "VARCHAR"}}
    ')) AS j
    FROM landed
    WHERE starts_with(ltrim(text, E' \t\r'), '{')
)
SELECT
    j.source_name,
    j.type,
    j.task,
    j.log_name,
    j.computer_name,
    {
        'UtcTime': j.event_data.UtcTime,
        'ProcessGuid': j.event_data.ProcessGuid,
        'ProcessId': TRY_CAST(j.event_data.ProcessId AS INTEGER),
        'Image': j.event_data.Image,
        'FileVersion': j.event_data.FileVersion,
        'Description': j.event_data.Description,
        'Product': j.event_data.Product,
        'Company': j.event_data.Company,
        'CommandLine': j.event_data.CommandLine,
        'CurrentDirectory': j.event_data.CurrentDirectory,
        'User': j.event_data.User,
        'LogonGuid': j.event_data.LogonGuid,
        'LogonId': j.event_data.LogonId,
        'TerminalSessionId': TRY_CAST(j.event_data.TerminalSessionId AS INTEGER),
        'IntegrityLevel': j.event_data.IntegrityLevel,
        'Hashes': j.event_data.Hashes,
        'ParentProcessGuid': j.event_data.ParentProcessGuid,
        'ParentProcessId': TRY_CAST(j.event_data.ParentProcessId AS INTEGER),
        'ParentImage': j.event_data.ParentImage,
        'ParentCommandLine': j.event_data.ParentCommandLine,
        'Protocol': j.event_data.Protocol,
        'Initiated': j.event_data.Initiated,
        'SourceIsIpv6': j.event_data.SourceIsIpv6,
        'SourceIp': j.event_data.SourceIp,
        'SourceHostname': j.event_data.SourceHostname,
        'SourcePort': TRY_CAST(j.event_data.SourcePort AS INTEGER),
        'SourcePortName': j.event_data.SourcePortName,
        'DestinationIsIpv6': j.event_data.DestinationIsIpv6,
        'DestinationIp': j.event_data.DestinationIp,
        'DestinationHostname': j.event_data.DestinationHostname,
        'DestinationPort': TRY_CAST(j.event_data.DestinationPort AS INTEGER),
        'DestinationPortName': j.event_data.DestinationPortName
    } AS event_data,
    TRY_CAST(j.event_id AS INTEGER) AS event_id,
    TRY_CAST(j.record_number AS BIGINT) AS _record_number,
    list_filter([
        CASE WHEN TRY_CAST(j.event_id AS INTEGER) IS NULL AND nullif(trim(j.event_id), '') IS NOT NULL
             THEN {'field': 'event_id', 'value': j.event_id} END,
        CASE WHEN TRY_CAST(j.event_data.ProcessId AS INTEGER) IS NULL AND nullif(trim(j.event_data.ProcessId), '') IS NOT NULL
             THEN {'field': 'ProcessId', 'value': j.event_data.ProcessId} END,
        CASE WHEN TRY_CAST(j.event_data.TerminalSessionId AS INTEGER) IS NULL AND nullif(trim(j.event_data.TerminalSessionId), '') IS NOT NULL
             THEN {'field': 'TerminalSessionId', 'value': j.event_data.TerminalSessionId} END,
        CASE WHEN TRY_CAST(j.event_data.ParentProcessId AS INTEGER) IS NULL AND nullif(trim(j.event_data.ParentProcessId), '') IS NOT NULL
             THEN {'field': 'ParentProcessId', 'value': j.event_data.ParentProcessId} END,
        CASE WHEN TRY_CAST(j.event_data.SourcePort AS INTEGER) IS NULL AND nullif(trim(j.event_data.SourcePort), '') IS NOT NULL
             THEN {'field': 'SourcePort', 'value': j.event_data.SourcePort} END,
        CASE WHEN TRY_CAST(j.event_data.DestinationPort AS INTEGER) IS NULL AND nullif(trim(j.event_data.DestinationPort), '') IS NOT NULL
             THEN {'field': 'DestinationPort', 'value': j.event_data.DestinationPort} END
    ], lambda e: e IS NOT NULL) AS _coercion_errors,
    source_file AS _source_file,
    source_line AS _source_line,
    source_offset AS _source_offset,
    TIMESTAMP '{{ batch_time }}' AS _ingested_at,
    _seq
FROM parsed
WHERE j IS NOT NULL
