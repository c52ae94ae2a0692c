-- Recipe step 2: CREATE STREAM WINLOGBEAT_STREAM (... event_data STRUCT<...>, event_id INTEGER)
-- WITH (KAFKA_TOPIC='winlogbeat', VALUE_FORMAT='JSON'): the landing folder plays the topic.
-- One row per landed JSON object line, typed as the CREATE STREAM declares, whichever layout carried it:
-- Winlogbeat 6.x (the recipe's), 7.x/8.x (winlog.*), 7.x/8.x with the Sysmon module (Elastic ECS), an
-- EVTX record (landed as {"evtx": <the record's Event object>}), or a flat event (NXLog, OTRF's datasets). Field names match whatever their letter case,
-- as KSQL's JSON deserializer matches them. A field that does not coerce, or that holds a NUL character, a
-- lone surrogate or a byte that is not UTF-8, becomes NULL and is listed in _coercion_errors, as is a UtcTime
-- that will not parse; the row is kept. Lines that are not JSON objects (or longer than max_line_bytes) go to
-- winlogbeat_rejects. Columns starting with _ are metadata; _extra_fields keeps every other event_data field
-- (name -> text), _kafka holds the message's topic, partition, offset, timestamp, key and headers when the source
-- is Kafka (var('source') = 'kafka').
{#- DuckDB 1.4 pushes the filter on a parsed column into the MATERIALIZED CTE that parses, which then parses
    every line twice (cte_filter_pusher): about a fifth of this query's time. -#}
{{ config(materialized='stream', duckdb_settings={'disabled_optimizers': 'cte_filter_pusher'}) }}
{#- The layouts and their mapping to flat text fields: macros/winlogbeat_layouts.sql. -#}
{% set kafka_type %}STRUCT(topic VARCHAR, "partition" INTEGER, "offset" BIGINT, "timestamp" TIMESTAMP, "key" BLOB, headers JSON){% endset %}
SELECT
    source_name,
    "type",
    task,
    log_name,
    computer_name,
    {
        'UtcTime': "UtcTime",
        'ProcessGuid': "ProcessGuid",
        'ProcessId': {{ ksql_integer('"ProcessId"') }},
        'Image': "Image",
        'FileVersion': "FileVersion",
        'Description': "Description",
        'Product': "Product",
        'Company': "Company",
        'CommandLine': "CommandLine",
        'CurrentDirectory': "CurrentDirectory",
        'User': "User",
        'LogonGuid': "LogonGuid",
        'LogonId': "LogonId",
        'TerminalSessionId': {{ ksql_integer('"TerminalSessionId"') }},
        'IntegrityLevel': "IntegrityLevel",
        'Hashes': "Hashes",
        'ParentProcessGuid': "ParentProcessGuid",
        'ParentProcessId': {{ ksql_integer('"ParentProcessId"') }},
        'ParentImage': "ParentImage",
        'ParentCommandLine': "ParentCommandLine",
        'Protocol': "Protocol",
        'Initiated': "Initiated",
        'SourceIsIpv6': "SourceIsIpv6",
        'SourceIp': "SourceIp",
        'SourceHostname': "SourceHostname",
        'SourcePort': {{ ksql_integer('"SourcePort"') }},
        'SourcePortName': "SourcePortName",
        'DestinationIsIpv6': "DestinationIsIpv6",
        'DestinationIp': "DestinationIp",
        'DestinationHostname': "DestinationHostname",
        'DestinationPort': {{ ksql_integer('"DestinationPort"') }},
        'DestinationPortName': "DestinationPortName"
    } AS event_data,
    {{ ksql_integer('event_id_text') }} AS event_id,
    _extra_fields,
    {{ ksql_integer('record_number_text', 'BIGINT') }} AS _record_number,
    layout AS _layout,
    field_errors || list_filter([
        {{ ksql_integer_error('event_id', 'event_id_text') }},
        {{ ksql_integer_error('ProcessId', '"ProcessId"') }},
        {{ ksql_integer_error('TerminalSessionId', '"TerminalSessionId"') }},
        {{ ksql_integer_error('ParentProcessId', '"ParentProcessId"') }},
        {{ ksql_integer_error('SourcePort', '"SourcePort"') }},
        {{ ksql_integer_error('DestinationPort', '"DestinationPort"') }},
        -- a record number that is not an integer must not name another event's delivery (TRY_CAST made 12.5 13)
        {{ ksql_integer_error('record_number', 'record_number_text', 'BIGINT') }},
        -- the stream keeps UtcTime's text; the rekey's event_date_creation is NULL for it
        {{ utc_time_error('"UtcTime"') }}
        {%- if var('source', 'files') == 'kafka' %},
        -- a producer's CreateTime past what a TIMESTAMP holds (nanoseconds, say)
        CASE WHEN try(epoch_ms(kafka_timestamp_ms)) IS NULL AND kafka_timestamp_ms IS NOT NULL
             THEN {'field': 'kafka.timestamp', 'value': CAST(kafka_timestamp_ms AS VARCHAR)} END
        {%- endif %}
    ], lambda e: e IS NOT NULL) AS _coercion_errors,
    source_file AS _source_file,
    source_line AS _source_line,
    source_offset AS _source_offset,
    {% if var('source', 'files') == 'kafka' -%}
    CAST({'topic': kafka_topic, 'partition': kafka_partition, 'offset': kafka_offset,
          'timestamp': try(epoch_ms(kafka_timestamp_ms)), 'key': kafka_key, 'headers': kafka_headers} AS {{ kafka_type }})
    {%- else -%}
    CAST(NULL AS {{ kafka_type }})
    {%- endif %} AS _kafka,
    TIMESTAMP '{{ batch_time }}' AS _ingested_at,
    _seq
FROM {{ winlogbeat_fields(source('landed_lines')) }} AS fields
