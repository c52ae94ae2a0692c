-- Not a recipe step: Sigma detections. Every rule of SYSMON_SIGMA_RULES that converts (sysmon_assets/hunting/sigma.py)
-- runs over the batch's new process creates (logsource process_creation) and network connects
-- (network_connection): one row per (rule, matching event). A connection also reads the fields Sysmon's event 3
-- lacks (CommandLine, ParentImage, ...) from its process's row in sysmon_process_create_table, and a hit carries
-- that process context (NULL when the process create has not arrived). A rule that reads such a field runs on a
-- connection when its wait for its process ends: when sysmon_join joins it, or gives up on it (the join's grace;
-- then it reads no process, as sysmon_join has no row for it).
{{ config(materialized='stream', group='hunting') }}
{% set sigma = var('sigma') %}
{#- Rendered for its columns only (execute false: lineage, the table's creation), the rules are left out: planning
    SigmaHQ's 1,234 conditions takes DuckDB about a second, and they do not change the columns. -#}
{% set rules = sigma.rules if execute else [] %}
{#- One text column per Sysmon field the rules of event_id read, named as Sigma names it (sysmon_assets/hunting/sigma.py,
    EVENT_FIELDS); without process, only the event's own fields. -#}
{% macro field_columns(event_id, process) -%}
{%- for name, lowered, source in sigma.columns[event_id] if process or not source.startswith('p.') %}
                    CAST({{ source }} AS VARCHAR) AS {{ name | sql_identifier }},
{%- endfor %}
{%- endmacro %}
{#- Each field's lower-cased twin, which the rules' case-insensitive matches read. -#}
{% macro lowered_columns(event_id, process) -%}
{%- for name, lowered, source in sigma.columns[event_id] if process or not source.startswith('p.') %}
                lower({{ name | sql_identifier }}) AS {{ lowered | sql_identifier }},
{%- endfor %}
{%- endmacro %}
{#- The numbers of the rules of a group that match one row: each rule is a CASE, evaluated on the rows of one scan. -#}
{% macro matching_rules(event_id, process) -%}
list_filter([
{%- for rule in rules if rule.event_id == event_id and rule.reads_process == process %}
            CASE WHEN {{ rule.condition }} THEN {{ rule.index }} END{{ ',' if not loop.last }}
{%- endfor %}], rule_index -> rule_index IS NOT NULL)
{%- endmacro %}
{#- The rules in groups of one scan each: by event, and whether they read the process of a connection. -#}
{% set groups = [] %}
{% for rule in rules if (rule.event_id, rule.reads_process) not in groups %}
    {%- set _ = groups.append((rule.event_id, rule.reads_process)) %}
{%- endfor %}
{#- What a connection reads of its process: the hit's process context (the SELECT below) and its rules' fields. -#}
{% set process_columns = ['process_guid', 'process_command_line', 'parent_process_path', 'parent_process_command_line',
                          'parent_process_guid'] %}
{% for name, lowered, source in sigma.columns[3] if source.startswith('p.') and source[2:] not in process_columns %}
    {%- set _ = process_columns.append(source[2:]) %}
{%- endfor %}
{#- Whether the rules that read a connection's process wait for it: KSQL's join waits for nothing. -#}
{% set waits = var('join_mode') != 'ksql' and (3, true) in groups %}
{#- The key a connection reads its process by: none for one the join gives up on (its create came too late or
    never), which sysmon_join has no row for either. -#}
{% set process_key %}{% if waits %}CASE WHEN _seq IN (SELECT _seq FROM given_up) THEN NULL ELSE process_guid END{% else %}process_guid{% endif %}{% endset %}
WITH events AS MATERIALIZED (
    SELECT * FROM {{ ref('winlogbeat_stream_rekey') }} WHERE event_id IN (1, 3)
{%- if waits %}
), given_up AS MATERIALIZED (
    -- the connections the join gives up on in this step (its grace ended without their create)
    SELECT _seq FROM {{ unmatched('sysmon_join') }}
), ended AS MATERIALIZED (
    -- the connections whose wait for their process create ends in this step, from this batch or earlier ones:
    -- joined now, or given up
    SELECT _seq FROM {{ ref('sysmon_join') }}
    UNION ALL
    SELECT _seq FROM given_up
), late AS MATERIALIZED (
    -- those of earlier batches, read from the history
    SELECT * FROM {{ ref('winlogbeat_stream_rekey', full=True) }}
    WHERE _seq IN (SELECT _seq FROM ended) AND _seq NOT IN (SELECT _seq FROM events)
), settled AS (
    -- the connections that a rule reading their process runs on now: so a hit does not depend on where batches
    -- are cut
    SELECT * FROM events WHERE event_id = 3 AND _seq IN (SELECT _seq FROM ended)
    UNION ALL
    SELECT * FROM late
), candidates AS (
    SELECT * FROM events
    UNION ALL
    SELECT * FROM late
{%- else %}
), settled AS (
    -- the batch's connections, with the process as the table stands at this step (in KSQL's join mode nothing
    -- waits; otherwise no rule reads the process)
    SELECT * FROM events WHERE event_id = 3
), candidates AS (
    SELECT * FROM events
{%- endif %}
), processes AS MATERIALIZED (
    -- the processes of the step's connections only, and only the columns read of them: a lake has no index, so
    -- the keyed table is scanned once here (not once per join below), and each column read is read for every row
    SELECT {{ process_columns | join(', ') }} FROM {{ ref('sysmon_process_create_table') }}
    WHERE process_guid IN (SELECT process_guid FROM candidates WHERE event_id = 3)
), matches AS (
{%- for event_id, process in groups %}
    -- the rules run once per distinct combination of the fields they read, then each match goes to its events
    SELECT unnest(seqs) AS _seq, rule_index
    FROM (
        SELECT seqs, unnest({{ matching_rules(event_id, process) }}) AS rule_index
        FROM (
            SELECT
                {{- lowered_columns(event_id, process) }}
                *
            FROM (
                SELECT
                    {{- field_columns(event_id, process) }}
                    list(e._seq) AS seqs
                {%- if process %}
                FROM (SELECT *, {{ process_key }} AS _process_key FROM settled) AS e
                LEFT JOIN processes AS p ON p.process_guid = e._process_key
                {%- else %}
                FROM events AS e
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
JOIN (SELECT *, {{ process_key }} AS _process_key FROM candidates) AS e ON e._seq = m._seq
-- on every event's GUID (an equi-join DuckDB hashes); a process create's context is its own (the CASEs above)
LEFT JOIN processes AS p ON p.process_guid = e._process_key
