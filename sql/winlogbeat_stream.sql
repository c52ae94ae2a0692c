-- Recipe step 2: CREATE STREAM WINLOGBEAT_STREAM (... event_data STRUCT<...>, event_id INTEGER)
-- WITH (KAFKA_TOPIC='winlogbeat', VALUE_FORMAT='JSON'): the landing folder plays the topic.
-- One row per landed JSON object line, typed as the CREATE STREAM declares, whichever layout carried it:
-- Winlogbeat 6.x (the recipe's), 7.x/8.x (winlog.*), 7.x/8.x with the Sysmon module (Elastic ECS), or an
-- EVTX record (landed as {"evtx": <the record's Event object>}). Field names match whatever their letter case,
-- as KSQL's JSON deserializer matches them. A field that does not coerce becomes NULL
-- and is listed in _coercion_errors; the row is kept. Lines that are not JSON objects (or longer than
-- max_line_bytes) go to winlogbeat_rejects. Columns starting with _ are metadata; _extra_fields keeps every other
-- event_data field (name -> text), _kafka holds the message's topic, partition, offset, timestamp, key and headers
-- when the source is Kafka (var('source') = 'kafka').
{{ config(materialized='stream') }}
{#- KSQL 5.1.1 reads an INTEGER field with Java's Integer.parseInt: an optional sign and decimal digits, in range.
    DuckDB's TRY_CAST would also take '2.5' (as 3), '0x1F', '1_000' and ' 5000'. -#}
{% macro ksql_integer(text) -%}
CASE WHEN regexp_full_match({{ text }}, '[+-]?[0-9]+') THEN TRY_CAST({{ text }} AS INTEGER) END
{%- endmacro %}
{#- A layout as from_json's type text, keys in the order written (the tojson filter would sort them). -#}
{% macro json_type(node) -%}
{%- if node is mapping -%}
{{ '{' }}{% for key, value in node.items() %}"{{ key }}": {{ json_type(value) }}{{ ', ' if not loop.last }}{% endfor %}{{ '}' }}
{%- else -%}
"{{ node }}"
{%- endif -%}
{%- endmacro %}
{#- Every key of a layout, at any depth, each followed by a comma. -#}
{% macro keys_of(node) -%}
{%- for key, value in node.items() -%}{{ key }},{{ keys_of(value) if value is mapping }}{%- endfor -%}
{%- endmacro %}
{#- A regex for `word` in any letter case, with ASCII classes: (?i) would fold Unicode too, a larger, slower DFA. -#}
{% macro any_case(word) -%}
{%- for c in word %}{{ '[' ~ c.upper() ~ c.lower() ~ ']' if c.upper() != c.lower() else c }}{% endfor -%}
{%- endmacro %}
{#- A regex for the spellings of one word (spellings: the ways the layouts write it, all equal ignoring case)
    that differ from every one of them in letter case: at the first letter that differs, anything may follow. -#}
{% macro other_cases(spellings) -%}
{%- set alternatives = [] -%}
{%- if spellings[0] -%}
{%- for letter in [spellings[0][0].upper(), spellings[0][0].lower()]|unique(case_sensitive=true) -%}
{%- set rests = [] -%}
{%- for spelling in spellings if spelling[0] == letter %}{% set _ = rests.append(spelling[1:]) %}{% endfor -%}
{%- if not rests -%}
{%- set _ = alternatives.append(letter ~ any_case(spellings[0][1:])) -%}
{%- elif rests[0] -%}
{%- set inner = other_cases(rests) -%}
{%- set _ = alternatives.append(letter ~ inner) if inner -%}
{%- endif -%}
{%- endfor -%}
{%- endif -%}
{{ '(?:' ~ alternatives|join('|') ~ ')' if alternatives }}
{%- endmacro %}
{#- The JSON text with every object key upper-cased (keys holding an escape sequence are left alone: upper-casing
    \n or \u00e9 would break them); values are copied as they are. It walks the string tokens in order, so a
    quote inside a value never starts a key. -#}
{% set json_string_token %}'"(?:[^"\\]|\\.)*"\s*:?'{% endset %}
{% macro upper_keys(text) -%}
regexp_split_to_array({{ text }}, {{ json_string_token }})[1] || array_to_string(list_transform(
    list_zip(regexp_extract_all({{ text }}, {{ json_string_token }}), regexp_split_to_array({{ text }}, {{ json_string_token }})[2:]),
    t -> CASE WHEN ends_with(t[1], ':') AND NOT contains(t[1], '\') THEN upper(t[1]) ELSE t[1] END || t[2]), '')
{%- endmacro %}
{#- Parse with a layout's exact field names; a line that spells a field in another letter case is parsed with
    its keys and the layout's names upper-cased, so "processguid", "PROCESSGUID" and "ProcessGuid" all match
    (KSQL 5.1.1 compares upper-cased names). Two keys of one object that differ only in case: the first in the
    line wins there (from_json keeps the first of equal keys). If the upper-cased text should not parse, the
    exact parse stands. -#}
{% macro parse(text, layout, other_case) -%}
CASE WHEN {{ other_case }}
     THEN coalesce(try(from_json({{ upper_keys(text) }}, '{{ json_type(layout)|upper }}')), try(from_json({{ text }}, '{{ json_type(layout) }}')))
     ELSE try(from_json({{ text }}, '{{ json_type(layout) }}')) END
{%- endmacro %}
{% set kafka_type %}STRUCT(topic VARCHAR, "partition" INTEGER, "offset" BIGINT, "timestamp" TIMESTAMP, "key" BLOB, headers JSON){% endset %}
-- The Sysmon EventData fields the recipe declares; three layouts carry them under different parents.
{% set event_data_fields = {
    "UtcTime": "VARCHAR", "ProcessGuid": "VARCHAR", "ProcessId": "VARCHAR", "Image": "VARCHAR",
    "FileVersion": "VARCHAR", "Description": "VARCHAR", "Product": "VARCHAR", "Company": "VARCHAR",
    "CommandLine": "VARCHAR", "CurrentDirectory": "VARCHAR", "User": "VARCHAR", "LogonGuid": "VARCHAR",
    "LogonId": "VARCHAR", "TerminalSessionId": "VARCHAR", "IntegrityLevel": "VARCHAR", "Hashes": "VARCHAR",
    "ParentProcessGuid": "VARCHAR", "ParentProcessId": "VARCHAR", "ParentImage": "VARCHAR", "ParentCommandLine": "VARCHAR",
    "Protocol": "VARCHAR", "Initiated": "VARCHAR", "SourceIsIpv6": "VARCHAR", "SourceIp": "VARCHAR",
    "SourceHostname": "VARCHAR", "SourcePort": "VARCHAR", "SourcePortName": "VARCHAR", "DestinationIsIpv6": "VARCHAR",
    "DestinationIp": "VARCHAR", "DestinationHostname": "VARCHAR", "DestinationPort": "VARCHAR", "DestinationPortName": "VARCHAR"} %}
-- The recipe's own layout (Winlogbeat 6.x): exactly the fields CREATE STREAM WINLOGBEAT_STREAM declares.
{% set winlogbeat6 = {
    "source_name": "VARCHAR", "type": "VARCHAR", "task": "VARCHAR", "log_name": "VARCHAR",
    "computer_name": "VARCHAR", "event_id": "VARCHAR", "record_number": "VARCHAR",
    "event_data": event_data_fields} %}
-- Winlogbeat 7.x/8.x (winlog.*), its Sysmon module's ECS fields, and EVTX records.
{% set other_layouts = {
    "@timestamp": "VARCHAR",
    "winlog": {"provider_name": "VARCHAR", "channel": "VARCHAR", "computer_name": "VARCHAR",
        "event_id": "VARCHAR", "task": "VARCHAR", "api": "VARCHAR", "record_id": "VARCHAR",
        "event_data": event_data_fields},
    "event": {"module": "VARCHAR", "code": "VARCHAR"},
    "process": {"entity_id": "VARCHAR", "pid": "VARCHAR", "executable": "VARCHAR",
        "command_line": "VARCHAR", "working_directory": "VARCHAR",
        "pe": {"file_version": "VARCHAR", "description": "VARCHAR", "product": "VARCHAR",
            "company": "VARCHAR", "imphash": "VARCHAR", "original_file_name": "VARCHAR"},
        "hash": {"sha1": "VARCHAR", "md5": "VARCHAR", "sha256": "VARCHAR"},
        "parent": {"entity_id": "VARCHAR", "pid": "VARCHAR", "executable": "VARCHAR",
            "command_line": "VARCHAR"}},
    "user": {"domain": "VARCHAR", "name": "VARCHAR"},
    "rule": {"name": "VARCHAR"},
    "file": {"path": "VARCHAR", "name": "VARCHAR", "pe": {"original_file_name": "VARCHAR"}},
    "registry": {"path": "VARCHAR"},
    "dns": {"question": {"name": "VARCHAR"}},
    "network": {"transport": "VARCHAR", "direction": "VARCHAR", "type": "VARCHAR", "protocol": "VARCHAR"},
    "source": {"ip": "VARCHAR", "port": "VARCHAR", "domain": "VARCHAR"},
    "destination": {"ip": "VARCHAR", "port": "VARCHAR", "domain": "VARCHAR"},
    "evtx": {"System": {"EventID": "VARCHAR", "Task": "VARCHAR", "EventRecordID": "VARCHAR", "Channel": "VARCHAR",
            "Computer": "VARCHAR",
            "Provider": {"#attributes": {"Name": "VARCHAR"}}},
        "EventData": event_data_fields}} %}
{#- _extra_fields: every event_data field the STRUCT does not read. The ECS fields that Winlogbeat's Sysmon module
    moved out of winlog.event_data and that have a Sysmon name the recipe does not declare go back under that
    name: (Sysmon name, ECS value, the event ids it holds that field for; none: every id). -#}
{% set ecs_extra_fields = [
    ("RuleName", 'j."rule"."name"', none),
    ("OriginalFileName", 'coalesce(j."process".pe.original_file_name, j."file".pe.original_file_name)', none),
    ("TargetFilename", 'j."file"."path"', [2, 11, 15, 23]),
    ("ImageLoaded", 'j."file"."path"', [6, 7]),
    ("Device", 'j."file"."path"', [9]),
    ("PipeName", 'j."file"."name"', [17, 18]),
    ("TargetObject", 'j.registry."path"', none),
    ("QueryName", 'j.dns.question."name"', none)] %}
{#- A JSON merge patch that deletes the names the STRUCT reads from an object (a name set to null is deleted). -#}
{% set declared_deleted %}{{ '{' }}{% for name in event_data_fields %}"{{ name }}": null{{ ', ' if not loop.last }}{% endfor %}{{ '}' }}{% endset %}
{#- The event_data objects a line holds, as JSON text: [event_data, winlog.event_data, evtx.EventData], one parse.
    A line that spells a key in another letter case finds them ignoring case, the first matching key at each
    level, as the upper-cased parse does. Quoting a found key in the path is safe: upper-cased it is one of
    these names, so it holds no quote or backslash. -#}
{% macro path_ignoring_case(text, names, path="'$'") -%}
{%- if names -%}
{{ path_ignoring_case(text, names[1:], path ~ " || '.\"' || list_filter(json_keys(" ~ text ~ ", " ~ path ~ "), lambda k: upper(k) = '" ~ names[0]|upper ~ "')[1] || '\"'") }}
{%- else -%}
{{ path }}
{%- endif -%}
{%- endmacro %}
{% set event_data_paths = [["event_data"], ["winlog", "event_data"], ["evtx", "EventData"]] %}
{% macro event_data_objects(text, other_case) -%}
CASE WHEN {{ other_case }}
     THEN [{% for names in event_data_paths %}json_extract({{ text }}, {{ path_ignoring_case(text, names) }}){{ ', ' if not loop.last }}{% endfor %}]
     ELSE json_extract({{ text }}, [{% for names in event_data_paths %}'$.{{ names|join('.') }}'{{ ', ' if not loop.last }}{% endfor %}]) END
{%- endmacro %}
{#- Spellings that must not send a line to the slower parse although they equal a field name ignoring case:
    every name as the layouts write it, and ProcessID, which every EVTX record carries in System.Execution. -#}
{% set spellings = (keys_of(winlogbeat6) ~ keys_of(other_layouts) ~ 'ProcessID,').split(',')|select|unique(case_sensitive=true)|list %}
{% set words = [] %}
{%- for word in spellings|map('lower')|unique %}
{%- set same_word = [] %}{% for spelling in spellings if spelling|lower == word %}{% set _ = same_word.append(spelling) %}{% endfor %}
{%- set _ = words.append(other_cases(same_word)) %}
{%- endfor %}
WITH landed AS (
    -- a landed file's line keeps its newline here: JSON allows the trailing whitespace, and no copy is made
    -- text is NULL if not UTF-8; a byte order mark (an exported file's first line) is not part of the event
    SELECT l.* REPLACE (CAST(l.source_file AS VARCHAR) AS source_file), ltrim(try(decode(CAST(l.line AS BLOB))), chr(65279)) AS text
    FROM {{ source('landed_lines') }} AS l
    WHERE l.line_bytes <= {{ var('max_line_bytes') }}
), cased AS (
    -- Does a key spell a field name in another letter case? One regex scan, so exact-case lines parse once.
    SELECT landed.*, regexp_matches(text, '"(?:{{ words|join('|') }})"\s*:') AS other_case
    FROM landed
), parsed AS MATERIALIZED (
    -- The recipe's own layout (Winlogbeat 6.x) first: most lines are parsed once, against exactly the
    -- fields CREATE STREAM WINLOGBEAT_STREAM declares; only lines it does not describe are parsed again.
    -- MATERIALIZED keeps it once: inlined, DuckDB pushes `j6 IS NOT NULL` down and runs from_json twice.
    SELECT cased.* EXCLUDE (line), {{ parse('text', winlogbeat6, 'other_case') }} AS j6
    FROM cased
    WHERE starts_with(ltrim(text, E' \t\r'), '{')
), reparsed AS (
    SELECT parsed.*, CASE WHEN j6.source_name IS NULL AND j6.computer_name IS NULL THEN {{ parse('text', other_layouts, 'other_case') }} END AS j
    FROM parsed
    WHERE j6 IS NOT NULL
), layouts AS (
    SELECT
        reparsed.*,
        CASE
            WHEN j6.source_name IS NOT NULL OR j6.computer_name IS NOT NULL THEN 'winlogbeat6'
            WHEN j.evtx.System.EventID IS NOT NULL THEN 'evtx'
            WHEN j."event".module = 'sysmon' THEN 'ecs'
            WHEN j.winlog.provider_name IS NOT NULL OR j.winlog.channel IS NOT NULL THEN 'winlogbeat7+'
            ELSE 'unknown'
        END AS layout
    FROM reparsed
), mapped AS (
    -- Each recipe field as text, from the first layout that carries it (the README's mapping tables).
    SELECT
        layouts.*,
        coalesce(j6.source_name, j.winlog.provider_name, j.evtx.System.Provider."#attributes".Name) AS source_name,
        coalesce(j6."type", j.winlog.api, CASE WHEN layout = 'evtx' THEN 'evtx' END) AS "type",
        coalesce(j6.task, j.winlog.task, j.evtx.System.Task) AS task,
        coalesce(j6.log_name, j.winlog.channel, j.evtx.System.Channel) AS log_name,
        -- the source host, never a forwarder's host.name
        coalesce(j6.computer_name, j.winlog.computer_name, j.evtx.System.Computer) AS computer_name,
        coalesce(j6.event_id, j.winlog.event_id, CASE WHEN layout = 'ecs' THEN j."event".code END,
                 -- an EVTX EventID with Qualifiers renders as {"#text": 7036, "#attributes": {...}}
                 CASE WHEN starts_with(j.evtx.System.EventID, '{')
                      THEN json_extract_string(j.evtx.System.EventID, '$."#text"')
                      ELSE j.evtx.System.EventID END) AS event_id_text,
        coalesce(j6.record_number, j.winlog.record_id, j.evtx.System.EventRecordID) AS record_number_text,
        coalesce(j6.event_data.UtcTime, j.winlog.event_data.UtcTime, j.evtx.EventData.UtcTime, CASE WHEN layout = 'ecs' THEN strftime(coalesce(try_strptime(j."@timestamp", '%Y-%m-%dT%H:%M:%S.%fZ'), try_strptime(j."@timestamp", '%Y-%m-%dT%H:%M:%SZ')), '%Y-%m-%d %H:%M:%S.%g') END) AS "UtcTime",
        coalesce(j6.event_data.ProcessGuid, j.winlog.event_data.ProcessGuid, j.evtx.EventData.ProcessGuid, CASE WHEN layout = 'ecs' THEN j."process".entity_id END) AS "ProcessGuid",
        coalesce(j6.event_data.ProcessId, j.winlog.event_data.ProcessId, j.evtx.EventData.ProcessId, CASE WHEN layout = 'ecs' THEN j."process".pid END) AS "ProcessId",
        coalesce(j6.event_data.Image, j.winlog.event_data.Image, j.evtx.EventData.Image, CASE WHEN layout = 'ecs' THEN j."process".executable END) AS "Image",
        coalesce(j6.event_data.FileVersion, j.winlog.event_data.FileVersion, j.evtx.EventData.FileVersion, CASE WHEN layout = 'ecs' THEN j."process".pe.file_version END) AS "FileVersion",
        coalesce(j6.event_data.Description, j.winlog.event_data.Description, j.evtx.EventData.Description, CASE WHEN layout = 'ecs' THEN j."process".pe.description END) AS "Description",
        coalesce(j6.event_data.Product, j.winlog.event_data.Product, j.evtx.EventData.Product, CASE WHEN layout = 'ecs' THEN j."process".pe.product END) AS "Product",
        coalesce(j6.event_data.Company, j.winlog.event_data.Company, j.evtx.EventData.Company, CASE WHEN layout = 'ecs' THEN j."process".pe.company END) AS "Company",
        coalesce(j6.event_data.CommandLine, j.winlog.event_data.CommandLine, j.evtx.EventData.CommandLine, CASE WHEN layout = 'ecs' THEN j."process".command_line END) AS "CommandLine",
        coalesce(j6.event_data.CurrentDirectory, j.winlog.event_data.CurrentDirectory, j.evtx.EventData.CurrentDirectory, CASE WHEN layout = 'ecs' THEN j."process".working_directory END) AS "CurrentDirectory",
        coalesce(j6.event_data.User, j.winlog.event_data.User, j.evtx.EventData.User, CASE WHEN layout = 'ecs' THEN concat_ws('\', j."user".domain, j."user".name) END) AS "User",
        coalesce(j6.event_data.LogonGuid, j.winlog.event_data.LogonGuid, j.evtx.EventData.LogonGuid) AS "LogonGuid",
        coalesce(j6.event_data.LogonId, j.winlog.event_data.LogonId, j.evtx.EventData.LogonId) AS "LogonId",
        coalesce(j6.event_data.TerminalSessionId, j.winlog.event_data.TerminalSessionId, j.evtx.EventData.TerminalSessionId) AS "TerminalSessionId",
        coalesce(j6.event_data.IntegrityLevel, j.winlog.event_data.IntegrityLevel, j.evtx.EventData.IntegrityLevel) AS "IntegrityLevel",
        coalesce(j6.event_data.Hashes, j.winlog.event_data.Hashes, j.evtx.EventData.Hashes, CASE WHEN layout = 'ecs' THEN nullif(concat_ws(',', 'SHA1=' || upper(j."process".hash.sha1), 'MD5=' || upper(j."process".hash.md5), 'SHA256=' || upper(j."process".hash.sha256), 'IMPHASH=' || upper(j."process".pe.imphash)), '') END) AS "Hashes",
        coalesce(j6.event_data.ParentProcessGuid, j.winlog.event_data.ParentProcessGuid, j.evtx.EventData.ParentProcessGuid, CASE WHEN layout = 'ecs' THEN j."process".parent.entity_id END) AS "ParentProcessGuid",
        coalesce(j6.event_data.ParentProcessId, j.winlog.event_data.ParentProcessId, j.evtx.EventData.ParentProcessId, CASE WHEN layout = 'ecs' THEN j."process".parent.pid END) AS "ParentProcessId",
        coalesce(j6.event_data.ParentImage, j.winlog.event_data.ParentImage, j.evtx.EventData.ParentImage, CASE WHEN layout = 'ecs' THEN j."process".parent.executable END) AS "ParentImage",
        coalesce(j6.event_data.ParentCommandLine, j.winlog.event_data.ParentCommandLine, j.evtx.EventData.ParentCommandLine, CASE WHEN layout = 'ecs' THEN j."process".parent.command_line END) AS "ParentCommandLine",
        coalesce(j6.event_data.Protocol, j.winlog.event_data.Protocol, j.evtx.EventData.Protocol, CASE WHEN layout = 'ecs' THEN j."network".transport END) AS "Protocol",
        coalesce(j6.event_data.Initiated, j.winlog.event_data.Initiated, j.evtx.EventData.Initiated, CASE WHEN layout = 'ecs' THEN CASE j."network".direction WHEN 'egress' THEN 'true' WHEN 'outbound' THEN 'true' WHEN 'ingress' THEN 'false' WHEN 'inbound' THEN 'false' END END) AS "Initiated",
        coalesce(j6.event_data.SourceIsIpv6, j.winlog.event_data.SourceIsIpv6, j.evtx.EventData.SourceIsIpv6, CASE WHEN layout = 'ecs' THEN CASE j."network"."type" WHEN 'ipv6' THEN 'true' WHEN 'ipv4' THEN 'false' END END) AS "SourceIsIpv6",
        coalesce(j6.event_data.SourceIp, j.winlog.event_data.SourceIp, j.evtx.EventData.SourceIp, CASE WHEN layout = 'ecs' THEN j."source".ip END) AS "SourceIp",
        coalesce(j6.event_data.SourceHostname, j.winlog.event_data.SourceHostname, j.evtx.EventData.SourceHostname, CASE WHEN layout = 'ecs' THEN j."source".domain END) AS "SourceHostname",
        coalesce(j6.event_data.SourcePort, j.winlog.event_data.SourcePort, j.evtx.EventData.SourcePort, CASE WHEN layout = 'ecs' THEN j."source".port END) AS "SourcePort",
        coalesce(j6.event_data.SourcePortName, j.winlog.event_data.SourcePortName, j.evtx.EventData.SourcePortName) AS "SourcePortName",
        coalesce(j6.event_data.DestinationIsIpv6, j.winlog.event_data.DestinationIsIpv6, j.evtx.EventData.DestinationIsIpv6, CASE WHEN layout = 'ecs' THEN CASE j."network"."type" WHEN 'ipv6' THEN 'true' WHEN 'ipv4' THEN 'false' END END) AS "DestinationIsIpv6",
        coalesce(j6.event_data.DestinationIp, j.winlog.event_data.DestinationIp, j.evtx.EventData.DestinationIp, CASE WHEN layout = 'ecs' THEN j."destination".ip END) AS "DestinationIp",
        coalesce(j6.event_data.DestinationHostname, j.winlog.event_data.DestinationHostname, j.evtx.EventData.DestinationHostname, CASE WHEN layout = 'ecs' THEN j."destination".domain END) AS "DestinationHostname",
        coalesce(j6.event_data.DestinationPort, j.winlog.event_data.DestinationPort, j.evtx.EventData.DestinationPort, CASE WHEN layout = 'ecs' THEN j."destination".port END) AS "DestinationPort",
        coalesce(j6.event_data.DestinationPortName, j.winlog.event_data.DestinationPortName, j.evtx.EventData.DestinationPortName, CASE WHEN layout = 'ecs' THEN j."network".protocol END) AS "DestinationPortName"
    FROM layouts
), extra_parts AS (
    -- What _extra_fields is built from. A line in exact case holding one event_data object (nearly every line):
    -- that object less the STRUCT's names, as JSON (extra_json), and its keys. Any other line, or a key that
    -- repeats (a MAP takes no duplicate): the entries one by one (extra_entries).
    SELECT
        with_objects.*,
        CASE WHEN NOT other_case AND list_count(objects) = 1 AND starts_with(coalesce(objects[1], objects[2], objects[3]), '{')
             THEN json_merge_patch(coalesce(objects[1], objects[2], objects[3]), '{{ declared_deleted }}') END AS extra_json,
        json_keys(extra_json) AS extra_keys,
        CASE WHEN extra_json IS NULL
             THEN flatten(list_transform(objects, lambda o: CASE WHEN starts_with(o, '{') THEN list_zip(json_keys(o), json_extract_string(o, '$.*')) ELSE [] END))
             WHEN list_unique(extra_keys) < len(extra_keys)
             THEN list_zip(extra_keys, json_extract_string(extra_json, '$.*')) END AS extra_entries
    FROM (SELECT mapped.*, {{ event_data_objects('text', 'other_case') }} AS objects FROM mapped) AS with_objects
), extra AS (
    SELECT
        extra_parts.*,
        CASE WHEN extra_entries IS NULL THEN from_json(extra_json, '"MAP(VARCHAR, VARCHAR)"')
             -- the first entry of a name wins (as from_json and the STRUCT take the first); the names the STRUCT
             -- read are left out, ignoring case if it did
             ELSE map_from_entries(list_filter(extra_entries, lambda e, i:
                 NOT CASE WHEN other_case THEN upper(e[1]) IN ({% for name in event_data_fields %}'{{ name|upper }}'{{ ', ' if not loop.last }}{% endfor %})
                          ELSE e[1] IN ({% for name in event_data_fields %}'{{ name }}'{{ ', ' if not loop.last }}{% endfor %}) END
                 AND list_position(list_transform(extra_entries, lambda f: f[1]), e[1]) = i)) END AS extra_map
    FROM extra_parts
)
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
    -- with the Sysmon module, the ECS fields that have a Sysmon name the STRUCT does not declare (an event_data
    -- entry of the same name wins)
    CASE WHEN layout = 'ecs' THEN map_concat(map_from_entries(list_filter([
        {%- for name, value, event_ids in ecs_extra_fields %}
        {'key': '{{ name }}', 'value': {{ "CASE WHEN " ~ ksql_integer('event_id_text') ~ " IN (" ~ event_ids|join(', ') ~ ") THEN " ~ value ~ " END" if event_ids else value }}}{{ ',' if not loop.last }}
        {%- endfor %}], lambda e: e.value IS NOT NULL)), extra_map) ELSE extra_map END AS _extra_fields,
    TRY_CAST(record_number_text AS BIGINT) AS _record_number,
    layout AS _layout,
    list_filter([
        CASE WHEN {{ ksql_integer('event_id_text') }} IS NULL AND nullif(trim(event_id_text), '') IS NOT NULL
             THEN {'field': 'event_id', 'value': event_id_text} END,
        CASE WHEN {{ ksql_integer('"ProcessId"') }} IS NULL AND nullif(trim("ProcessId"), '') IS NOT NULL
             THEN {'field': 'ProcessId', 'value': "ProcessId"} END,
        CASE WHEN {{ ksql_integer('"TerminalSessionId"') }} IS NULL AND nullif(trim("TerminalSessionId"), '') IS NOT NULL
             THEN {'field': 'TerminalSessionId', 'value': "TerminalSessionId"} END,
        CASE WHEN {{ ksql_integer('"ParentProcessId"') }} IS NULL AND nullif(trim("ParentProcessId"), '') IS NOT NULL
             THEN {'field': 'ParentProcessId', 'value': "ParentProcessId"} END,
        CASE WHEN {{ ksql_integer('"SourcePort"') }} IS NULL AND nullif(trim("SourcePort"), '') IS NOT NULL
             THEN {'field': 'SourcePort', 'value': "SourcePort"} END,
        CASE WHEN {{ ksql_integer('"DestinationPort"') }} IS NULL AND nullif(trim("DestinationPort"), '') IS NOT NULL
             THEN {'field': 'DestinationPort', 'value': "DestinationPort"} END
    ], lambda e: e IS NOT NULL) AS _coercion_errors,
    source_file AS _source_file,
    source_line AS _source_line,
    source_offset AS _source_offset,
    {% if var('source', 'files') == 'kafka' -%}
    CAST({'topic': kafka_topic, 'partition': kafka_partition, 'offset': kafka_offset,
          'timestamp': epoch_ms(kafka_timestamp_ms), 'key': kafka_key, 'headers': kafka_headers} AS {{ kafka_type }})
    {%- else -%}
    CAST(NULL AS {{ kafka_type }})
    {%- endif %} AS _kafka,
    TIMESTAMP '{{ batch_time }}' AS _ingested_at,
    _seq
FROM extra
