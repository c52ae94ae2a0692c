{#- The input layouts of WINLOGBEAT_STREAM and their mapping to flat text fields: one block per layout.

    A layout block:
    - name: the layout's name (the stream's _layout column);
    - json: the fields it carries, as from_json's type (top-level keys distinct from every other layout's);
    - when: the SQL condition that a parsed line is in this layout; a line is the first layout whose `when` holds;
    - fields: recipe field (source_name, type, task, log_name, computer_name, event_id, record_number, or one of
      sysmon_event_data's names) -> the SQL expression that carries it as text;
    - event_data (optional): the object that holds Sysmon's EventData fields under their own names (a layout parsed
      alone may name its whole parse: the line's top level);
    - parsed_alone_as (optional): the name of its own parse, of the lines no other layout describes (such layouts
      come last): for a layout whose keys the others' parse cannot hold beside theirs;
    - only_when_detected (optional): its fields count only on a line of this layout;
    - extra_fields (optional): event_data fields it holds under other names, which _extra_fields gets back:
      (Sysmon name, value, the event ids it holds that field for; none: every id);
    - spellings (optional): keys its lines carry that equal a field name ignoring case;
    - mapped_from (optional): (field, the expression of the value it is mapped from) for fields mapped from values
      of another form: a value that maps to none leaves the field NULL and is listed as its coercion error.
    Each field comes from the first layout (in this list) that carries it. The first layout is parsed on its own
    (most lines are in it): its expressions read `j6`; the others are parsed together: theirs read `j`, but for a
    layout parsed alone (its parsed_alone_as). -#}

{#- The Sysmon EventData fields the recipe declares. -#}
{% set sysmon_event_data = {
    "UtcTime": "VARCHAR", "ProcessGuid": "VARCHAR", "ProcessId": "VARCHAR", "Image": "VARCHAR",
    "FileVersion": "VARCHAR", "Description": "VARCHAR", "Product": "VARCHAR", "Company": "VARCHAR",
    "CommandLine": "VARCHAR", "CurrentDirectory": "VARCHAR", "User": "VARCHAR", "LogonGuid": "VARCHAR",
    "LogonId": "VARCHAR", "TerminalSessionId": "VARCHAR", "IntegrityLevel": "VARCHAR", "Hashes": "VARCHAR",
    "ParentProcessGuid": "VARCHAR", "ParentProcessId": "VARCHAR", "ParentImage": "VARCHAR", "ParentCommandLine": "VARCHAR",
    "Protocol": "VARCHAR", "Initiated": "VARCHAR", "SourceIsIpv6": "VARCHAR", "SourceIp": "VARCHAR",
    "SourceHostname": "VARCHAR", "SourcePort": "VARCHAR", "SourcePortName": "VARCHAR", "DestinationIsIpv6": "VARCHAR",
    "DestinationIp": "VARCHAR", "DestinationHostname": "VARCHAR", "DestinationPort": "VARCHAR", "DestinationPortName": "VARCHAR"} %}

{#- A flat event's fields: the System fields it names like this, then the EventData fields (its "User" is a text, ECS's
    "user" an object: the two cannot be one parse's keys, so it is parsed alone). -#}
{% set flat_json = {"SourceName": "VARCHAR", "Channel": "VARCHAR", "Hostname": "VARCHAR", "EventID": "VARCHAR",
                    "Task": "VARCHAR", "RecordNumber": "VARCHAR"} %}
{% set _ = flat_json.update(sysmon_event_data) %}

{#- SQL: an ECS hash object's fields (and an import hash) as Sysmon writes Hashes, SHA1=...,MD5=...,SHA256=...,IMPHASH=...;
    NULL for none. -#}
{% macro ecs_hashes(hash, imphash) -%}
nullif(concat_ws(',', 'SHA1=' || upper({{ hash }}.sha1), 'MD5=' || upper({{ hash }}.md5), 'SHA256=' || upper({{ hash }}.sha256), 'IMPHASH=' || upper({{ imphash }})), '')
{%- endmacro %}

{#- SQL: a command line from the arguments the Sysmon module of Winlogbeat 7.3 and 7.4 split it into (process.args, a
    JSON list; it kept no command_line), quoted as Windows' CommandLineToArgvW reads the same arguments back: an
    argument that is empty or holds a space, tab or quote in quotes, its quotes escaped and the backslashes before a
    quote or the closing quote doubled; a text that is no list as it is. -#}
{% macro ecs_command_line(args) -%}
CASE WHEN starts_with({{ args }}, '[') THEN array_to_string(list_transform(try(json_extract_string({{ args }}, '$[*]')),
    lambda a: CASE WHEN a = '' OR regexp_matches(a, '[ \t"]')
                   THEN '"' || regexp_replace(regexp_replace(a, '(\\*)"', '\1\1\\"', 'g'), '(\\+)$', '\1\1') || '"'
                   ELSE a END), ' ')
     ELSE {{ args }} END
{%- endmacro %}

{#- An ECS document's event id as the stream reads it, 0 for none: the module moves some events' fields to where
    another event's fields go (event 20's Destination to process.executable, events 8 and 10's source process to
    process.*). -#}
{% set ecs_event_id = "coalesce(" ~ ksql_integer('coalesce(j.winlog.event_id, j."event".code)') ~ ", 0)" %}

{#- A file's hashes as the module writes them (file.hash, file.pe.imphash), else the top level's (hash.*: the module of
    2019 put every event's hashes there), rebuilt as Sysmon writes them. -#}
{% set ecs_file_hashes = "coalesce(" ~ ecs_hashes('j."file".hash', 'j."file".pe.imphash') ~ ", " ~ ecs_hashes('j."hash"', 'j."hash".imphash') ~ ")" %}

{% set winlogbeat_layouts = [
    {
        "name": "winlogbeat6",
        "comment": "the recipe's own layout (Winlogbeat 6.x): exactly the fields CREATE STREAM WINLOGBEAT_STREAM declares",
        "json": {
            "source_name": "VARCHAR", "type": "VARCHAR", "task": "VARCHAR", "log_name": "VARCHAR",
            "computer_name": "VARCHAR", "event_id": "VARCHAR", "record_number": "VARCHAR",
            "event_data": sysmon_event_data},
        "when": "j6.source_name IS NOT NULL OR j6.computer_name IS NOT NULL",
        "fields": {
            "source_name": "j6.source_name", "type": 'j6."type"', "task": "j6.task", "log_name": "j6.log_name",
            "computer_name": "j6.computer_name", "event_id": "j6.event_id", "record_number": "j6.record_number"},
        "event_data": "j6.event_data",
    },
    {
        "name": "winlogbeat7+",
        "comment": "Winlogbeat 7.x/8.x: winlog.*; a line with the Sysmon module's ECS fields, or an EVTX record, is not this one",
        "json": {
            "winlog": {"provider_name": "VARCHAR", "channel": "VARCHAR", "computer_name": "VARCHAR",
                "event_id": "VARCHAR", "task": "VARCHAR", "api": "VARCHAR", "record_id": "VARCHAR",
                "event_data": sysmon_event_data}},
        "when": "(j.winlog.provider_name IS NOT NULL OR j.winlog.channel IS NOT NULL) AND j.evtx.System.EventID IS NULL AND j.\"event\".module IS DISTINCT FROM 'sysmon' AND j.\"event\".dataset IS DISTINCT FROM 'windows.sysmon_operational'",
        "fields": {
            "source_name": "j.winlog.provider_name", "type": "j.winlog.api", "task": "j.winlog.task",
            "log_name": "j.winlog.channel",
            "computer_name": "j.winlog.computer_name",
            "event_id": "j.winlog.event_id", "record_number": "j.winlog.record_id"},
        "event_data": "j.winlog.event_data",
    },
    {
        "name": "evtx",
        "comment": "an EVTX record, landed as {\"evtx\": <the record's Event object>}",
        "json": {
            "evtx": {"System": {"EventID": "VARCHAR", "Task": "VARCHAR", "EventRecordID": "VARCHAR", "Channel": "VARCHAR",
                    "Computer": "VARCHAR",
                    "Provider": {"#attributes": {"Name": "VARCHAR"}}},
                "EventData": sysmon_event_data}},
        "when": "j.evtx.System.EventID IS NOT NULL",
        "fields": {
            "source_name": 'j.evtx.System.Provider."#attributes".Name', "type": "CASE WHEN layout = 'evtx' THEN 'evtx' END",
            "task": "j.evtx.System.Task", "log_name": "j.evtx.System.Channel", "computer_name": "j.evtx.System.Computer",
            "event_id": "CASE WHEN starts_with(j.evtx.System.EventID, '{') THEN coalesce(json_extract_string(j.evtx.System.EventID, '$.\"#text\"'), j.evtx.System.EventID) ELSE j.evtx.System.EventID END",
            "record_number": "j.evtx.System.EventRecordID"},
        "event_data": "j.evtx.EventData",
        "spellings": ["ProcessID"],
    },
    {
        "name": "ecs",
        "comment": "Winlogbeat 7.x/8.x with the Sysmon module, or Elastic Agent's Windows integration (data set windows.sysmon_operational) as Elasticsearch stores it: what they moved out of winlog.event_data into ECS fields",
        "json": {
            "@timestamp": "VARCHAR",
            "event": {"module": "VARCHAR", "dataset": "VARCHAR", "code": "VARCHAR"},
            "process": {"entity_id": "VARCHAR", "pid": "VARCHAR", "executable": "VARCHAR",
                "command_line": "VARCHAR", "args": "VARCHAR", "working_directory": "VARCHAR",
                "pe": {"file_version": "VARCHAR", "description": "VARCHAR", "product": "VARCHAR",
                    "company": "VARCHAR", "imphash": "VARCHAR", "original_file_name": "VARCHAR"},
                "hash": {"sha1": "VARCHAR", "md5": "VARCHAR", "sha256": "VARCHAR"},
                "parent": {"entity_id": "VARCHAR", "pid": "VARCHAR", "executable": "VARCHAR",
                    "command_line": "VARCHAR", "args": "VARCHAR"}},
            "hash": {"sha1": "VARCHAR", "md5": "VARCHAR", "sha256": "VARCHAR", "imphash": "VARCHAR"},
            "user": {"domain": "VARCHAR", "name": "VARCHAR"},
            "rule": {"name": "VARCHAR"},
            "file": {"path": "VARCHAR", "name": "VARCHAR", "pe": {"original_file_name": "VARCHAR", "imphash": "VARCHAR"},
                "hash": {"sha1": "VARCHAR", "md5": "VARCHAR", "sha256": "VARCHAR"}},
            "error": {"code": "VARCHAR"},
            "registry": {"path": "VARCHAR"},
            "dns": {"question": {"name": "VARCHAR"}},
            "network": {"transport": "VARCHAR", "direction": "VARCHAR", "type": "VARCHAR", "protocol": "VARCHAR"},
            "source": {"ip": "VARCHAR", "port": "VARCHAR", "domain": "VARCHAR"},
            "destination": {"ip": "VARCHAR", "port": "VARCHAR", "domain": "VARCHAR"}},
        "when": "j.\"event\".module = 'sysmon' OR j.\"event\".dataset = 'windows.sysmon_operational'",
        "only_when_detected": true,
        "fields": {
            "event_id": 'j."event".code',
            "UtcTime": "strftime(CASE WHEN regexp_matches(j.\"@timestamp\", '[T ][0-9:.,]+(Z|[+-][0-9][0-9](:?[0-9][0-9])?)$') THEN TRY_CAST(j.\"@timestamp\" AS TIMESTAMPTZ) AT TIME ZONE 'UTC' END, '%Y-%m-%d %H:%M:%S.%g')",
            "ProcessGuid": "CASE WHEN " ~ ecs_event_id ~ " NOT IN (8, 10) THEN j.\"process\".entity_id END",
            "ProcessId": "CASE WHEN " ~ ecs_event_id ~ " NOT IN (8, 10) THEN j.\"process\".pid END",
            "Image": "CASE WHEN " ~ ecs_event_id ~ " NOT IN (8, 10, 20) THEN j.\"process\".executable END",
            "FileVersion": 'j."process".pe.file_version',
            "Description": 'j."process".pe.description',
            "Product": 'j."process".pe.product',
            "Company": 'j."process".pe.company',
            "CommandLine": 'coalesce(j."process".command_line, ' ~ ecs_command_line('j."process".args') ~ ')',
            "CurrentDirectory": 'j."process".working_directory',
            "User": "nullif(concat_ws('\\', j.\"user\".domain, j.\"user\".name), '')",
            "Hashes": "CASE WHEN " ~ ecs_event_id ~ " <> 15 THEN coalesce(" ~ ecs_hashes('j."process".hash', 'j."process".pe.imphash') ~ ", " ~ ecs_file_hashes ~ ") END",
            "ParentProcessGuid": 'j."process".parent.entity_id',
            "ParentProcessId": 'j."process".parent.pid',
            "ParentImage": 'j."process".parent.executable',
            "ParentCommandLine": 'coalesce(j."process".parent.command_line, ' ~ ecs_command_line('j."process".parent.args') ~ ')',
            "Protocol": 'j."network".transport',
            "Initiated": "CASE j.\"network\".direction WHEN 'egress' THEN 'true' WHEN 'outbound' THEN 'true' WHEN 'ingress' THEN 'false' WHEN 'inbound' THEN 'false' END",
            "SourceIsIpv6": "CASE j.\"network\".\"type\" WHEN 'ipv6' THEN 'true' WHEN 'ipv4' THEN 'false' END",
            "SourceIp": 'j."source".ip',
            "SourceHostname": 'j."source".domain',
            "SourcePort": 'j."source".port',
            "DestinationIsIpv6": "CASE j.\"network\".\"type\" WHEN 'ipv6' THEN 'true' WHEN 'ipv4' THEN 'false' END",
            "DestinationIp": 'j."destination".ip',
            "DestinationHostname": 'j."destination".domain',
            "DestinationPort": 'j."destination".port',
            "DestinationPortName": "CASE WHEN " ~ ecs_event_id ~ " = 3 THEN j.\"network\".protocol END"},
        "mapped_from": [
            ("UtcTime", 'j."@timestamp"'), ("Initiated", 'j."network".direction'),
            ("SourceIsIpv6", 'j."network"."type"'), ("DestinationIsIpv6", 'j."network"."type"')],
        "extra_fields": [
            ("RuleName", 'j."rule"."name"', none),
            ("OriginalFileName", 'coalesce(j."process".pe.original_file_name, j."file".pe.original_file_name)', none),
            ("TargetFilename", 'j."file"."path"', [2, 11, 15, 26, 27, 28, 29]),
            ("TargetFilename", 'coalesce(j."file"."path", j."file"."name")', [23]),
            ("ImageLoaded", 'j."file"."path"', [6, 7]),
            ("Device", 'j."file"."path"', [9]),
            ("PipeName", 'j."file"."name"', [17, 18]),
            ("TargetObject", 'j.registry."path"', none),
            ("QueryName", 'j.dns.question."name"', none),
            ("Destination", 'j."process".executable', [20]),
            ("SourceProcessGuid", 'j."process".entity_id', [8]),
            ("SourceProcessGUID", 'j."process".entity_id', [10]),
            ("SourceProcessId", 'j."process".pid', [8, 10]),
            ("SourceImage", 'j."process".executable', [8, 10]),
            ("Hash", ecs_file_hashes, [15]),
            ("ID", 'j."error".code', [255])],
    },
    {
        "name": "flat",
        "comment": "a flat Windows event (NXLog's to_json(), OTRF Security-Datasets since 2020): System and EventData fields side by side",
        "parsed_alone_as": "jf",
        "json": flat_json,
        "when": "jf.SourceName IS NOT NULL OR jf.Hostname IS NOT NULL",
        "fields": {
            "source_name": "jf.SourceName", "task": "jf.Task", "log_name": "jf.Channel", "computer_name": "jf.Hostname",
            "event_id": "jf.EventID", "record_number": "jf.RecordNumber"},
        "event_data": "jf",
    },
] %}

{#- One layout's expression for a recipe field (none if it does not carry it). -#}
{% macro layout_field(layout, field) -%}
{%- set value = layout.fields.get(field) or (layout.event_data ~ '.' ~ field if layout.get('event_data') and field in sysmon_event_data) -%}
{%- if value -%}
{{ "CASE WHEN layout = '" ~ layout.name ~ "' THEN " ~ value ~ " END" if layout.get('only_when_detected') else value }}
{%- endif -%}
{%- endmacro %}

{#- A mark (json_any_case.sql): U+FDD0 followed by the escape it marks, \xNN (a byte that is not UTF-8) or \uDxxx (a
    lone surrogate), its backslash doubled in a value kept as JSON text (an object or list). The character followed
    by anything else is text: a line may hold it (a noncharacter, but valid UTF-8). -#}
{% set mark_pattern %}'\x{FDD0}(\\(?:\\)?(?:x[0-9A-F]{2}|u[dD][89a-fA-F][0-9a-fA-F]{2}))'{% endset %}

{#- The text with its marks dropped (the escapes they mark stay). -#}
{% macro unmarked(text) -%}
regexp_replace({{ text }}, {{ mark_pattern }}, '\1', 'g')
{%- endmacro %}

{#- SQL condition: the text field holds a NUL character, or a marked lone surrogate or byte that is not UTF-8 (on a
    line that holds marks; the pattern is matched only in a field that holds the mark's character). -#}
{% macro damaged(field) -%}
(contains({{ field }}, chr(0)) OR CASE WHEN holds_marks AND contains({{ field }}, chr(64976))
    THEN regexp_matches({{ field }}, {{ mark_pattern }}) ELSE false END)
{%- endmacro %}

{#- A damaged value as a coercion error shows it: each NUL written \u0000, marks dropped (a lone surrogate stays
    written as its escape, a byte that is not UTF-8 as \xNN). -#}
{% macro shown_damaged(value) -%}
{{ unmarked("replace(" ~ value ~ ", chr(0), '\\u0000')") }}
{%- endmacro %}

{#- SQL: the entries (name, text) of a JSON object. -#}
{% macro object_entries(o) -%}
list_zip(json_keys({{ o }}), json_extract_string({{ o }}, '$.*'))
{%- endmacro %}

{#- SQL: the MAP of (name, text) entries, the first entry of a name winning (a MAP takes one of each). Entries whose
    names repeat are sorted by name and position, so that each name's first is found next to the one before it: a
    line of 50,000 fields takes a sort, not 50,000 scans of its names. -#}
{% macro map_of_first_entries(entries) -%}
{%- set sorted = "list_sort(list_transform(" ~ entries ~ ", lambda e, i: {'name': e[1], 'at': i, 'text': e[2]}))" -%}
CASE WHEN list_unique(list_transform({{ entries }}, lambda e: e[1])) = len({{ entries }})
     THEN map_from_entries({{ entries }})
     ELSE map_from_entries(list_transform(list_sort(list_transform(list_filter(
         list_zip({{ sorted }}, [NULL] || {{ sorted }}[:-2]),
         lambda pair: pair[2] IS NULL OR pair[2].name <> pair[1].name),
         lambda pair: {'at': pair[1].at, 'name': pair[1].name, 'text': pair[1].text})),
         lambda e: (e.name, e.text))) END
{%- endmacro %}

{#- SQL: the fields of an EVTX record's UserData (which some providers write instead of EventData) as (name, text)
    entries, NULL if it is no object: its one wrapper element is left out and named as xml_name, as Winlogbeat
    gives it (whose user_data is read as it is). -#}
{% macro evtx_user_data_entries(ud) -%}
CASE WHEN coalesce(json_type({{ ud }}) <> 'OBJECT', true) THEN NULL
     WHEN json_array_length(json_keys({{ ud }})) <> 1 THEN {{ object_entries(ud) }}
     ELSE [('xml_name', json_keys({{ ud }})[1])] || CASE json_type({{ ud }}, '$.*')[1]
         WHEN 'OBJECT' THEN {{ object_entries("json_extract(" ~ ud ~ ", '$.*')[1]") }}
         WHEN 'NULL' THEN []
         ELSE {{ object_entries(ud) }} END END
{%- endmacro %}

{#- A recipe field as text, from the first layout that carries it; a layout parsed alone first, as it parses only the
    lines no other layout describes: there its own field wins over an object another layout would read. -#}
{% macro flat_field(field) -%}
{%- set values = [] -%}
{%- set alone_first = (winlogbeat_layouts|selectattr('parsed_alone_as', 'defined')|list)
                      + (winlogbeat_layouts|rejectattr('parsed_alone_as', 'defined')|list) -%}
{%- for layout in alone_first %}{% set value = layout_field(layout, field) %}{% if value %}{% set _ = values.append(value) %}{% endif %}{% endfor -%}
coalesce({{ values|join(', ') }})
{%- endmacro %}

{#- The landed lines (source: a relation of line, line_bytes, source_file and the other landing columns) that are
    JSON objects, as flat text fields: source_name, "type", task, log_name, computer_name, event_id_text,
    record_number_text and the sysmon_event_data names; layout (the layout's name); field_errors (as coercion
    errors: the fields made NULL for a NUL character or a lone surrogate, an event_data that is not an object);
    _extra_fields (every other event_data field, name -> text); and the landed columns (source_file, source_line,
    source_offset, _seq, ...).
    Lines that are not JSON objects (or longer than max_line_bytes) are left out. -#}
{% macro winlogbeat_fields(landed_lines) -%}
{%- set first = winlogbeat_layouts[0] -%}
{%- set others = {} -%}
{%- set alone = [] -%}
{%- for layout in winlogbeat_layouts[1:] %}{% set _ = (alone.append(layout) if layout.get('parsed_alone_as') else others.update(layout.json)) %}{% endfor -%}
{#- The layouts parsed together but the first, which a layout parsed alone comes after (a line of the first has no `j`). -#}
{%- set described_together -%}
({% for layout in winlogbeat_layouts[1:] if not layout.get('parsed_alone_as') %}({{ layout.when }}){{ ' OR ' if not loop.last }}{% endfor %})
{%- endset -%}
{#- Spellings that must not send a line to the slower parse although they equal a field name ignoring case:
    every name as the layouts write it, and those a layout's lines carry besides (EVTX's System.Execution ProcessID). -#}
{%- set spellings = (keys_of(first.json) ~ keys_of(others)).split(',') -%}
{#- The layouts parsed alone look for their own keys in another case, and on the lines they parse only: a key of
    another layout's line spelled like theirs (an event_data "HostName") must not change how that line is read,
    nor a key of theirs spelled like another layout's (NXLog's "Domain", ECS's "domain") how theirs are. -#}
{%- set alone_spellings = [] -%}
{%- for layout in alone %}{% set _ = alone_spellings.extend(keys_of(layout.json).split(',')) %}{% endfor -%}
{%- for layout in winlogbeat_layouts %}{% set _ = alone_spellings.extend(layout.get('spellings', [])) %}{% endfor -%}
{%- for layout in winlogbeat_layouts %}{% set _ = spellings.extend(layout.get('spellings', [])) %}{% endfor -%}
{#- The flat text fields (column -> the name a coercion error gives it). -#}
{%- set text_fields = {"source_name": "source_name", "type": "type", "task": "task", "log_name": "log_name",
                       "computer_name": "computer_name", "event_id_text": "event_id", "record_number_text": "record_number"} -%}
{%- for field in sysmon_event_data %}{% set _ = text_fields.update({field: field}) %}{% endfor -%}
{#- Their values in one SQL list (the damage checks read it twice). -#}
{%- set text_values %}[{% for field in text_fields %}"{{ field }}"{{ ', ' if not loop.last }}{% endfor %}]{% endset -%}
{#- Where Winlogbeat 6.x, 7.x/8.x and an EVTX record keep UserData. -#}
{%- set user_data_paths = [["user_data"], ["winlog", "user_data"], ["evtx", "UserData"]] -%}
{%- set event_data_paths = [] -%}
{%- for layout in winlogbeat_layouts if '.' in layout.get('event_data', '') %}{% set _ = event_data_paths.append(layout.event_data.split('.')[1:]) %}{% endfor -%}
{#- SQL: the one event_data object a line holds, of those the layouts' paths found (see extra_parts) -#}
{%- set event_data_object %}coalesce({% for _ in event_data_paths %}objects[{{ loop.index }}]{{ ', ' if not loop.last }}{% endfor %}){% endset -%}
{#- The layouts whose event_data is the line's top level: every key the layout reads is left out of _extra_fields. -#}
{%- set top_level = [] -%}
{%- for layout in winlogbeat_layouts if layout.get('event_data') and '.' not in layout.event_data %}{% set _ = top_level.append(layout) %}{% endfor -%}
{#- A JSON merge patch that deletes names from an object (a name set to null is deleted). -#}
{%- macro deleting(names) %}{{ '{' }}{% for name in names %}"{{ name }}": null{{ ', ' if not loop.last }}{% endfor %}{{ '}' }}{% endmacro -%}
{#- SQL: the names read from a line's event_data, as a SQL list, upper-cased or not. -#}
{%- macro read_names(upper) -%}
CASE {% for layout in top_level %}WHEN layout = '{{ layout.name }}' THEN [{% for name in layout.json %}'{{ name|upper if upper else name }}'{{ ', ' if not loop.last }}{% endfor %}] {% endfor -%}
ELSE [{% for name in sysmon_event_data %}'{{ name|upper if upper else name }}'{{ ', ' if not loop.last }}{% endfor %}] END
{%- endmacro -%}
(
WITH landed AS (
    -- a landed file's line keeps its newline here: JSON allows the trailing whitespace, and no copy is made
    SELECT l.* REPLACE (CAST(l.source_file AS VARCHAR) AS source_file), try(decode(CAST(l.line AS BLOB))) AS utf8_text
    FROM {{ landed_lines }} AS l
    WHERE l.line_bytes <= {{ var('max_line_bytes') }}
), decoded AS (
    -- A byte that is not UTF-8 (a shipper writing another code page) would reject the whole line: it is marked
    -- instead (marked_invalid_utf8), so that only the field holding it becomes NULL. A byte order mark (an
    -- exported file's first line) is not part of the event.
    SELECT landed.* EXCLUDE (utf8_text),
        ltrim(CASE WHEN utf8_text IS NULL THEN {{ marked_invalid_utf8('CAST(line AS BLOB)') }} ELSE utf8_text END,
              chr(65279)) AS text,
        utf8_text IS NULL AS invalid_utf8
    FROM landed
), escapes AS (
    -- JSON writes a NUL character as the escape \u0000 (a raw one is not JSON), and a surrogate as \ud800-\udfff:
    -- a line without either holds no NUL and no lone surrogate (one scan, as fast as looking for \u0000 alone)
    SELECT decoded.*, invalid_utf8 OR regexp_matches(text, '\\u(?:0000|[dD][89a-fA-F])') AS may_be_damaged
    FROM decoded
), repaired AS (
    -- A lone surrogate (a Windows string may hold one; Python's json writes it as an escape) would reject the
    -- whole line too: it is marked the same way (marked_lone_surrogates).
    SELECT escapes.* REPLACE (coalesce(marked, text) AS text)
    FROM (
        SELECT escapes.*, CASE WHEN may_be_damaged THEN {{ marked_lone_surrogates('text') }} END AS marked,
            invalid_utf8 OR coalesce(marked <> text, false) AS holds_marks
        FROM escapes
    ) AS escapes
), cased AS (
    -- Does a key spell a field name in another letter case? One regex scan, so exact-case lines parse once.
    -- (The regex is slow to render: it is rendered once per process, and not at all for the columns only.)
    SELECT repaired.* EXCLUDE (marked), {{ cached(has_other_case_key, 'text', spellings) if execute else 'false' }} AS other_case
    FROM repaired
), parsed AS MATERIALIZED (
    -- The first layout ({{ first.comment }}):
    -- most lines are parsed once, against its fields only; only lines it does not describe are parsed again.
    -- MATERIALIZED keeps it once: inlined, DuckDB pushes `j6 IS NOT NULL` down and runs from_json twice (and
    -- pushes it into a MATERIALIZED CTE too, unless the model disables cte_filter_pusher, as the stream does).
    SELECT cased.* EXCLUDE (line), {{ from_json_any_case('text', first.json, 'other_case') }} AS j6
    FROM cased
    WHERE starts_with(ltrim(text, E' \t\r\n'), '{')
), reparsed AS (
    SELECT parsed.*, CASE WHEN NOT ({{ first.when }}) THEN {{ from_json_any_case('text', others, 'other_case') }} END AS j
    FROM parsed
    WHERE j6 IS NOT NULL
), alone_cased AS (
    -- the lines no layout parsed together describes: does one spell a key of a layout parsed alone in another case?
    SELECT reparsed.*,
        CASE WHEN alone_candidate THEN {{ cached(has_other_case_key, 'text', alone_spellings) if execute and alone else 'false' }} ELSE false END
            AS alone_other_case
    FROM (
        -- (a CASE, so that a line of the first layout, which has no `j`, is not looked at further)
        SELECT reparsed.*, CASE WHEN j IS NULL THEN false ELSE NOT coalesce({{ described_together }}, false) END AS alone_candidate
        FROM reparsed
    ) AS reparsed
), parsed_alone AS (
    -- the layouts parsed alone, read against each
    SELECT alone_cased.* EXCLUDE (alone_candidate)
        {%- for layout in alone %},
        CASE WHEN alone_candidate THEN {{ from_json_any_case('text', layout.json, 'alone_other_case') }} END AS {{ layout.parsed_alone_as }}
        {%- endfor %}
    FROM alone_cased
), layouts AS (
    SELECT
        -- a layout parsed alone reads nothing of a line it does not describe, and its line's keys are in another case
        -- as its own check found
        parsed_alone.* EXCLUDE (alone_other_case) REPLACE (
            {%- for layout in alone %}
            CASE WHEN {{ layout.when }} THEN {{ layout.parsed_alone_as }} END AS {{ layout.parsed_alone_as }},
            {%- endfor %}
            CASE {% for layout in alone %}WHEN {{ layout.when }} THEN alone_other_case {% endfor %}ELSE other_case END AS other_case),
        CASE
            {%- for layout in winlogbeat_layouts %}
            -- {{ layout.comment }}
            WHEN {{ layout.when }} THEN '{{ layout.name }}'
            {%- endfor %}
            ELSE 'unknown'
        END AS layout
    FROM parsed_alone
), mapped AS (
    -- Each recipe field as text, from the first layout that carries it (the README's mapping tables).
    SELECT
        layouts.*,
        {%- for field in ["source_name", "type", "task", "log_name", "computer_name"] %}
        {{ flat_field(field) }} AS "{{ field }}",
        {%- endfor %}
        {{ flat_field("event_id") }} AS event_id_text,
        {{ flat_field("record_number") }} AS record_number_text,
        {%- for field in sysmon_event_data %}
        {{ flat_field(field) }} AS "{{ field }}"{{ ',' if not loop.last }}
        {%- endfor %}
    FROM layouts
), damage AS (
    -- Which text fields hold damage: one check of a list of them, so that DuckDB plans (and compiles the mark's
    -- regex for) one expression, not one per field; every chunk of a batch plans the query again.
    SELECT mapped.*, CASE WHEN may_be_damaged THEN list_transform({{ text_values }}, lambda v: {{ damaged('v') }}) END
        AS damaged_fields
    FROM mapped
), undamaged AS (
    -- A field holding a NUL character (no Windows string does: it is damage) becomes NULL and is listed in
    -- damage_errors with its value, each NUL written \u0000. DuckLake's file pruning cuts a filter constant at a
    -- NUL, so one such process GUID made every later batch fail.
    -- A field holding a mark becomes NULL the same way, listed with the lone surrogate's escape or the byte as \xNN.
    SELECT
        damage.* EXCLUDE (damaged_fields) REPLACE (
            {%- for field in text_fields %}
            CASE WHEN damaged_fields[{{ loop.index }}] THEN NULL ELSE "{{ field }}" END AS "{{ field }}"{{ ',' if not loop.last }}
            {%- endfor %}),
        CASE WHEN may_be_damaged THEN list_filter(list_transform(list_zip(
            [{% for name in text_fields.values() %}'{{ name }}'{{ ', ' if not loop.last }}{% endfor %}],
            {{ text_values }},
            damaged_fields),
            lambda f: CASE WHEN f[3] THEN {'field': f[1], 'value': {{ shown_damaged('f[2]') }}} END),
            lambda e: e IS NOT NULL) ELSE [] END AS damage_errors
    FROM damage
), extra_parts AS (
    -- What _extra_fields is built from: the event_data objects a line holds, as JSON text, one parse. A line
    -- that spells a key in another letter case finds them ignoring case, as the upper-cased parse does.
    -- A line in exact case holding one event_data object of under 100,000 bytes (nearly every line):
    -- that object less the STRUCT's names, as JSON (extra_json), and its keys. Any other line, or a key that
    -- repeats (a MAP takes no duplicate): the entries one by one (extra_entries).
    SELECT
        with_objects.*,
        CASE WHEN NOT other_case AND list_count(objects) = 1 AND starts_with({{ event_data_object }}, '{')
                  -- json_merge_patch recurses into nested values: one nested 200,000 deep overflowed its stack
                  AND strlen({{ event_data_object }}) < 100000
             THEN CASE {% for layout in top_level %}WHEN layout = '{{ layout.name }}' THEN json_merge_patch(objects[1], '{{ deleting(layout.json) }}')
                       {% endfor %}ELSE json_merge_patch({{ event_data_object }}, '{{ deleting(sysmon_event_data) }}') END
             END AS extra_json,
        json_keys(extra_json) AS extra_keys,
        CASE WHEN extra_json IS NULL
             THEN flatten(list_transform(objects, lambda o: CASE WHEN starts_with(o, '{') THEN {{ object_entries('o') }} ELSE [] END))
             WHEN list_unique(extra_keys) < len(extra_keys)
             THEN list_zip(extra_keys, json_extract_string(extra_json, '$.*')) END AS extra_entries,
        -- an event without an EventData object may hold UserData instead (providers other than Sysmon write it)
        -- (found ignoring case, as the line's other keys may be in exact case: the few lines that get here)
        CASE WHEN extra_json IS NULL AND len(list_filter(objects, lambda o: starts_with(o, '{'))) = 0
             THEN [{% for names in user_data_paths %}json_extract(text, {{ path_ignoring_case('text', names) }}){{ ', ' if not loop.last }}{% endfor %}]
        END AS user_data,
        coalesce(
            CASE WHEN json_type(user_data[1]) = 'OBJECT' THEN {{ object_entries('user_data[1]') }} END,
            CASE WHEN json_type(user_data[2]) = 'OBJECT' THEN {{ object_entries('user_data[2]') }} END,
            {{ evtx_user_data_entries('user_data[3]') }}) AS user_data_entries
    FROM (
        SELECT undamaged.*,
            CASE {% for layout in top_level %}WHEN layout = '{{ layout.name }}' THEN [json_extract(text, '$')] {% endfor %}WHEN other_case
                 THEN [{% for names in event_data_paths %}json_extract(text, {{ path_ignoring_case('text', names) }}){{ ', ' if not loop.last }}{% endfor %}]
                 ELSE json_extract(text, [{% for names in event_data_paths %}'$.{{ names|join('.') }}'{{ ', ' if not loop.last }}{% endfor %}]) END AS objects
        FROM undamaged
    ) AS with_objects
), extra AS (
    SELECT
        extra_parts.*,
        -- an event without EventData that holds UserData (providers other than Sysmon write it): all its fields,
        -- the first of a name winning (the STRUCT read none of them)
        CASE WHEN user_data_entries IS NOT NULL
             THEN {{ map_of_first_entries('user_data_entries') }}
             WHEN extra_entries IS NULL THEN from_json(extra_json, '"MAP(VARCHAR, VARCHAR)"')
             -- the first entry of a name wins (as from_json and the STRUCT take the first); the names the STRUCT
             -- read are left out, ignoring case if it did
             ELSE {{ map_of_first_entries("list_filter(extra_entries, lambda e:
                 NOT CASE WHEN other_case THEN list_contains(" ~ read_names(true) ~ ", upper(e[1]))
                          ELSE list_contains(" ~ read_names(false) ~ ", e[1]) END)") }} END AS extra_map
    FROM extra_parts
), fields AS (
    SELECT
        extra.* EXCLUDE (damage_errors),
        -- an event_data that is not an object (a string, a list) fills no field: listed, as a value that does not coerce
        -- (extra_json is set only on a line whose one event_data is an object: nearly every line, not looked at again)
        CASE WHEN extra_json IS NULL
             THEN damage_errors || [{'field': 'event_data', 'value': CAST(o AS VARCHAR)} FOR o IN objects IF CAST(o AS VARCHAR) <> 'null' AND NOT starts_with(o, '{')]
             ELSE damage_errors END
        || CASE
            {%- for layout in winlogbeat_layouts if layout.get('mapped_from') %}
            WHEN layout = '{{ layout.name }}' THEN list_filter([
                {%- for field, value in layout.mapped_from %}
                CASE WHEN "{{ field }}" IS NULL AND {{ value }} IS NOT NULL
                     THEN {'field': '{{ field }}', 'value': {{ shown_damaged(value) }}} END{{ ',' if not loop.last }}
                {%- endfor %}], lambda e: e IS NOT NULL)
            {%- endfor %}
            ELSE [] END AS field_errors,
        -- a layout's fields that have a Sysmon name the STRUCT does not declare go back under that name (an
        -- event_data entry of the same name wins)
        CASE
            {%- for layout in winlogbeat_layouts if layout.get('extra_fields') %}
            WHEN layout = '{{ layout.name }}' THEN map_concat(map_from_entries(list_filter([
                {%- for name, value, event_ids in layout.extra_fields %}
                {'key': '{{ name }}', 'value': {{ "CASE WHEN " ~ ksql_integer('event_id_text') ~ " IN (" ~ event_ids|join(', ') ~ ") THEN " ~ value ~ " END" if event_ids else value }}}{{ ',' if not loop.last }}
                {%- endfor %}], lambda e: e.value IS NOT NULL)), extra_map)
            {%- endfor %}
            ELSE extra_map
        END AS _extra_fields
    FROM extra
), unmarked AS (
    -- _extra_fields gives a marked lone surrogate as its escape and a byte as \xNN (the first entry of a name wins,
    -- as above)
    SELECT fields.*, CASE WHEN holds_marks THEN list_transform(map_entries(_extra_fields), lambda e:
        ({{ unmarked('e.key') }}, {{ unmarked('e.value') }})) END AS extra_entries_unmarked
    FROM fields
)
SELECT unmarked.* EXCLUDE (extra_entries_unmarked) REPLACE (
    CASE WHEN holds_marks THEN {{ map_of_first_entries('extra_entries_unmarked') }} ELSE _extra_fields END AS _extra_fields)
FROM unmarked
)
{%- endmacro %}
