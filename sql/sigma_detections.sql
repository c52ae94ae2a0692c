-- Not a recipe step: Sigma detections. Every rule of SYSMON_SIGMA_RULES that converts (sysmon_assets/hunting/sigma.py)
-- runs over the batch's new process creates (logsource process_creation) and network connects
-- (network_connection): one row per (rule, matching event). A connection also reads the fields Sysmon's event 3
-- lacks (CommandLine, ParentImage, ...) from its process's row in sysmon_process_create_table as the table stands
-- at this step, and a hit carries that process context (NULL when the process create has not arrived).
{{ config(materialized='stream', group='hunting') }}
{% set sigma = var('sigma') %}
{#- Rendered for its columns only (execute false: lineage, the table's creation), the rules are left out: planning
    SigmaHQ's 1,234 conditions takes DuckDB about a second, and they do not change the columns. -#}
{% set rules = sigma.rules if execute else [] %}
{#- One text column per Sysmon field the rules of event_id read, named as Sigma names it (sysmon_assets/hunting/sigma.py,
    EVENT_FIELDS). -#}
{% macro field_columns(event_id) -%}
{%- for name, lowered, source in sigma.columns[event_id] %}
                    CAST({{ source }} AS VARCHAR) AS {{ name | sql_identifier }},
{%- endfor %}
{%- endmacro %}
{#- Each field's lower-cased twin, which the rules' case-insensitive matches read. -#}
{% macro lowered_columns(event_id) -%}
{%- for name, lowered, source in sigma.columns[event_id] %}
                lower({{ name | sql_identifier }}) AS {{ lowered | sql_identifier }},
{%- endfor %}
{%- endmacro %}
{#- The numbers of the rules of event_id that match one row: each rule is a CASE, evaluated on the rows of one scan. -#}
{% macro matching_rules(event_id) -%}
list_filter([
{%- for rule in rules if rule.event_id == event_id %}
            CASE WHEN {{ rule.condition }} THEN {{ rule.index }} END{{ ',' if not loop.last }}
{%- endfor %}], rule_index -> rule_index IS NOT NULL)
{%- endmacro %}
{% set event_ids = rules | map(attribute='event_id') | unique | list %}
{#- What a connection reads of its process: the hit's process context (the SELECT below) and its rules' fields. -#}
{% set process_columns = ['process_guid', 'process_command_line', 'parent_process_path', 'parent_process_command_line',
                          'parent_process_guid'] %}
{% for name, lowered, source in sigma.columns[3] if source.startswith('p.') and source[2:] not in process_columns %}
    {%- set _ = process_columns.append(source[2:]) %}
{%- endfor %}
WITH events AS MATERIALIZED (
    SELECT * FROM {{ ref('winlogbeat_stream_rekey') }} WHERE event_id IN (1, 3)
), processes AS MATERIALIZED (
    -- the processes of the batch's connections only, and only the columns read of them: a lake has no index, so
    -- the keyed table is scanned once here (not once per join below), and each column read is read for every row
    SELECT {{ process_columns | join(', ') }} FROM {{ ref('sysmon_process_create_table') }}
    WHERE process_guid IN (SELECT process_guid FROM events WHERE event_id = 3)
), matches AS (
{%- for event_id in event_ids %}
    -- the rules run once per distinct combination of the fields they read, then each match goes to its events
    SELECT unnest(seqs) AS _seq, rule_index
    FROM (
        SELECT seqs, unnest({{ matching_rules(event_id) }}) AS rule_index
        FROM (
            SELECT
                {{- lowered_columns(event_id) }}
                *
            FROM (
                SELECT
                    {{- field_columns(event_id) }}
                    list(e._seq) AS seqs
                FROM events AS e
                {%- if event_id == 3 %}
                LEFT JOIN processes AS p ON p.process_guid = e.process_guid
                {%- endif %}
                WHERE e.event_id = {{ event_id }}
                GROUP BY ALL
            )
        )
    )
    UNION ALL
{%- endfor %}
    SELECT CAST(NULL AS BIGINT) AS _seq, CAST(NULL AS INTEGER) AS rule_index WHERE false
), rules (rule_index, rule_id, rule_title, level, tags) AS (
{%- if rules %}
    VALUES
    {%- for rule in rules %}
        ({{ rule.index }}, {{ rule.rule_id | sql_string }}, {{ rule.title | sql_string }},
         {{ rule.level | sql_string if rule.level else 'NULL' }},
         [{% for tag in rule.tags %}{{ tag | sql_string }}{{ ', ' if not loop.last }}{% endfor %}]::VARCHAR[]){{ ',' if not loop.last }}
    {%- endfor %}
{%- else %}
    SELECT NULL, NULL, NULL, NULL, NULL WHERE false
{%- endif %}
)
SELECT
    CAST(r.rule_id AS VARCHAR) AS rule_id,
    CAST(r.rule_title AS VARCHAR) AS rule_title,
    CAST(r.level AS VARCHAR) AS level,
    CAST(r.tags AS VARCHAR[]) AS tags,
    e.event_id,
    e._computer_name AS computer_name,
    e.event_date_creation,
    e.process_guid,
    e.process_path,
    CASE e.event_id WHEN 1 THEN e.process_command_line ELSE p.process_command_line END AS process_command_line,
    CASE e.event_id WHEN 1 THEN e.parent_process_path ELSE p.parent_process_path END AS parent_process_path,
    CASE e.event_id WHEN 1 THEN e.parent_process_command_line ELSE p.parent_process_command_line END
        AS parent_process_command_line,
    CASE e.event_id WHEN 1 THEN e.parent_process_guid ELSE p.parent_process_guid END AS parent_process_guid,
    e.user_account,
    e.dst_ip_addr,
    e.dst_port,
    e.dst_host_name,
    e._record_number,
    e._seq
FROM matches AS m
JOIN rules AS r ON r.rule_index = m.rule_index
JOIN events AS e ON e._seq = m._seq
-- on every event's GUID (an equi-join DuckDB hashes); a process create's context is its own (the CASEs above)
LEFT JOIN processes AS p ON p.process_guid = e.process_guid
