-- Not a recipe step: the dead-letter side table of WINLOGBEAT_STREAM (KSQL would log and skip these).
-- Every non-blank landed line (every Kafka message) that is not a JSON object, with where it came from and why;
-- and every part of a landed file that could not be read (read_error: a damaged gzip stream or EVTX file).
{{ config(materialized='stream', part_of='winlogbeat_stream') }}
{% set kafka = var('source', 'files') == 'kafka' %}
WITH unparsed AS (
    SELECT l.* FROM {{ source('landed_lines') }} AS l
    -- ref(): the stream's rows of this chunk (rejects is part of its step)
    ANTI JOIN (SELECT _seq FROM {{ ref('winlogbeat_stream') }}) AS parsed USING (_seq)
), landed AS (
    -- the line without the newline a landed file's line still carries
    SELECT u.* REPLACE (CAST(u.line AS BLOB)[1:u.line_bytes] AS line, CAST(u.source_file AS VARCHAR) AS source_file)
    FROM unparsed AS u
), decoded AS (
    -- escaped: the BLOB's text, each byte that is not printable ASCII (a backslash too) written \xNN;
    -- unmarked: without the byte order marks the stream drops too; blank: nothing but spaces, tabs and carriage returns
    SELECT landed.*, try(decode(line)) AS text, CAST(line AS VARCHAR) AS escaped, ltrim(text, chr(65279)) AS unmarked,
        trim(unmarked, E' \t\r\n') = '' AS blank
    FROM landed
), utf16 AS (
    -- UTF-16 text (Windows PowerShell's default file encoding): a byte order mark, or about every second byte NUL
    -- (ASCII text; a run of NUL bytes alone, as a crashed writer leaves, is not), or the one NUL byte after the last
    -- little-endian newline, which ends such a file
    SELECT decoded.*,
        {% if not kafka %}line = from_hex('00') OR {% endif %}(octet_length(line) >= 2 AND (list_contains([from_hex('FFFE'), from_hex('FEFF')], line[1:2])
            OR (length(escaped) - length(replace(escaped, '\x00', ''))) / 4 / octet_length(line)
               BETWEEN 1 / 3 AND 2 / 3)) AS looks_utf16
    FROM decoded
)
SELECT
    source_file,
    source_line,
    source_offset,
    CASE
        WHEN read_error IS NOT NULL THEN read_error
        WHEN octet_length(line) > {{ var('max_line_bytes') }}
            THEN 'line of ' || octet_length(line) || ' bytes is longer than max_line_bytes={{ var('max_line_bytes') }}'
        WHEN looks_utf16 THEN 'UTF-16 text: only UTF-8 is read{{ "" if kafka else " (save the file as UTF-8)" }}'
        WHEN text IS NULL THEN 'not valid UTF-8'
        WHEN blank THEN 'empty message value'
        WHEN NOT json_valid(unmarked) THEN 'malformed JSON'
        ELSE 'valid JSON but not an object: ' || json_type(unmarked)
    END AS error,
    {% if kafka -%}
    CAST({'topic': kafka_topic, 'partition': kafka_partition, 'offset': kafka_offset}
         AS STRUCT(topic VARCHAR, "partition" INTEGER, "offset" BIGINT)) AS kafka,
    {%- else -%}
    CAST(NULL AS STRUCT(topic VARCHAR, "partition" INTEGER, "offset" BIGINT)) AS kafka,
    {%- endif %}
    octet_length(line) AS raw_bytes,
    coalesce(left(text, 2048), {{ first_characters_marking_invalid_utf8('line', 2048) }}) AS raw_text,
    TIMESTAMP '{{ batch_time }}' AS ingested_at
FROM utf16
WHERE text IS NULL OR NOT blank OR read_error IS NOT NULL{% if kafka %} OR kafka_topic IS NOT NULL{% endif %}
